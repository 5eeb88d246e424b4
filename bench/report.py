"""Turn one run's numbers into bench/results/ (JSON, Markdown table, PNG chart) and the README's table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _get(data: dict[str, Any], *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _why(data: dict[str, Any], *keys: Any) -> str:
    """A cell for a value that is missing: the error of the measurement it belonged to."""
    for depth in range(len(keys), 0, -1):
        error = _get(data, *keys[: depth - 1], "error") if depth > 1 else None
        if error:
            return f"fails: {error}"
    return "–"


def _cell(data: dict[str, Any], keys: tuple[Any, ...], fmt: str) -> str:
    value = _get(data, *keys)
    return fmt.format(value) if isinstance(value, (int, float)) else _why(data, *keys)


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _streams_cell(runs: Any) -> str:
    if not isinstance(runs, list):
        return _why({"x": runs}, "x", "y")
    parts = []
    for run in runs:
        p99 = f"{run['p99_ms']:.0f} ms" if run.get("p99_ms") is not None else "none answered"
        verdict = (
            "ok" if run["ok"] else f"FAIL ({run['opened']} opened, {run['answered']}/{run['probes']} status < 1 s)"
        )
        parts.append(f"{run['streams']}: {verdict}, status p99 {p99}")
    return "; ".join(parts)


def _max_streams(runs: Any) -> int:
    return max((r["streams"] for r in runs if r["ok"]), default=0) if isinstance(runs, list) else 0


def budget(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, budget, measured, holds) for the issue's performance budget."""
    new, raw, staging, engine = r.get("new", {}), r.get("raw", {}), r.get("staging", {}), r.get("engine", {})
    rows: list[tuple[str, str, str, bool | None]] = []

    def share(what: str, measured: Any, limit: Any, limit_name: str, note: str = "") -> None:
        q = _ratio(measured, limit)
        text = f"{measured:.0f} of {limit:.0f} MiB/s = {q:.0%}" if q is not None else "not measured"
        rows.append((what, f"≥ 50% of {limit_name}", text + note, None if q is None else q >= 0.5))

    def engine_note(key: str, measured: Any) -> str:
        alone, q = _get(engine, key), _ratio(measured, _get(engine, key))
        return f"; the engine's archive API alone (curl): {alone:.0f} MiB/s (ours: {q:.0%} of it)" if q else ""

    share("upload 1 GiB", _get(new, "flow_big", "upload_mbs"), _get(raw, "upload_mbs"), "raw loopback PUT to disk")
    share("download 1 GiB", _get(new, "flow_big", "download_mbs"), _get(raw, "download_mbs"), "raw loopback GET")
    growth = _get(new, "flow_big", "rss_growth_mib")
    rows.append(
        (
            "peak RSS growth during the 1 GiB upload",
            "< 50 MB",
            f"{growth * 1.048576:.1f} MB" if growth is not None else "not measured",
            None if growth is None else growth * 1.048576 < 50,
        )
    )
    for size_key, mib in (("flow_small", r["small_mib"]), ("flow_big", r["big_mib"])):
        for field, rate_key, what in (
            ("last_byte_to_start_ms", "in_mbs", "last byte → container start"),
            ("exit_to_complete_ms", "out_mbs", "container exit → complete"),
        ):
            measured, rate = _get(new, size_key, field), _get(staging, rate_key)
            if measured is None or rate is None:
                rows.append((f"{what}, {mib} MiB", "< 100 ms + staging", "not measured", None))
                continue
            allowed = 100 + mib / rate * 1000
            floor = engine_floor(engine, mib) if field == "last_byte_to_start_ms" else None
            note = f" (the engine alone: create + copy in + start = {floor:.0f} ms)" if floor else ""
            rows.append(
                (
                    f"{what}, {mib} MiB",
                    f"< 100 ms + {mib / rate * 1000:.0f} ms staging = {allowed:.0f} ms",
                    f"{measured:.0f} ms{note}",
                    measured < allowed,
                )
            )
    mount = r.get("mount", {})
    bare = _engine_bare(engine)
    for size_key, mib in (("flow_small", r["small_mib"]), ("flow_big", r["big_mib"])):
        measured = _get(mount, size_key, "last_byte_to_start_ms")
        note = f" (the engine alone: create + data directory + start = {bare:.0f} ms)" if bare else ""
        rows.append(
            (
                f"last byte → container start, {mib} MiB, inputs mounted (INPUT_STAGING=mount)",
                "< 100 ms",
                f"{measured:.0f} ms{note}" if measured is not None else _why(mount, size_key, "last_byte_to_start_ms"),
                None if measured is None else measured < 100,
            )
        )
    streams = _get(new, "streams")
    at_1000 = next((s for s in streams if s["streams"] >= 1000), None) if isinstance(streams, list) else None
    rows.append(
        (
            "concurrent log streams",
            "≥ 1000 with status p99 < 100 ms",
            f"{_max_streams(streams)} held; at 1000 status p99 {at_1000['p99_ms']:.0f} ms"
            if at_1000 and at_1000.get("p99_ms") is not None
            else _streams_cell(streams),
            bool(at_1000 and at_1000["ok"] and at_1000["p99_ms"] < 100),
        )
    )
    share(
        "staging into the container (archive API)",
        _get(staging, "in_mbs"),
        _get(raw, "disk_copy_mbs"),
        "raw disk copy",
        engine_note("in_mbs", _get(staging, "in_mbs")),
    )
    share(
        "staging out of the container (archive API)",
        _get(staging, "out_mbs"),
        _get(raw, "disk_copy_mbs"),
        "raw disk copy",
        engine_note("out_mbs", _get(staging, "out_mbs")),
    )
    return rows


def _engine_bare(engine: dict[str, Any]) -> float | None:
    """ms the engine alone takes to create the container, put the data directory in and start it: what mount
    mode needs (its inputs are bind mounts)."""
    parts = [_get(engine, key) for key in ("create_ms", "put_dir_ms", "start_mounted_ms")]
    return sum(parts) if None not in parts else None


def engine_floor(engine: dict[str, Any], mib: float) -> float | None:
    """ms the engine alone takes from nothing to a started container with `mib` staged in: create, put, start
    (the put measured for the small file, estimated at the engine's archive rate for another size)."""
    create, put_small, start, rate = (_get(engine, k) for k in ("create_ms", "put_small_ms", "start_ms", "in_mbs"))
    if None in (create, put_small, start):
        return None
    return create + start + (put_small if mib <= 100 or rate is None else mib / rate * 1000)


def table(r: dict[str, Any]) -> str:
    s, b = r["small_mib"], r["big_mib"]
    old, new, raw, dock = r.get("old", {}), r.get("new", {}), r.get("raw", {}), r.get("docker", {})
    lines = [
        f"Run {r['when']}, {r['seconds']:.0f} s in all. inferserver {r['versions']['inferserver']} under uvicorn; "
        f"old server: {r['versions']['old']} under uWSGI {r['versions']['uwsgi']}; "
        f"both behind {r['versions']['nginx']}, "
        "one private Docker engine, image inferserver-test/copy:1. MiB/s throughout. Throughputs, (f) and the "
        f"references are the median of {r.get('repeats', 1)} runs (each run is in latest.json).",
        "",
        "| measure | old server | inferserver | reference (same run) | inferserver / reference |",
        "| --- | --- | --- | --- | --- |",
    ]

    def row(label: str, keys: tuple[Any, ...], fmt: str, ref: str = "", ref_value: Any = None) -> None:
        q = _ratio(_get(new, *keys), ref_value)
        lines.append(
            f"| {label} | {_cell(old, keys, fmt)} | {_cell(new, keys, fmt)} | {ref} | "
            f"{f'{q:.0%}' if q is not None else ''} |"
        )

    cli = _get(dock, "cli_total_s")
    row(f"(a) whole inference, ablinfer client, {s} MiB", ("e2e_small", "seconds"), "{:.1f} s")
    row(
        f"(a) whole inference, ablinfer client, {b} MiB",
        ("e2e_big", "seconds"),
        "{:.1f} s",
        f"docker cp in + run + cp out: {cli:.1f} s" if cli else _why(dock, "cli_total_s"),
        None,
    )
    row(
        f"(b) upload {b} MiB",
        ("flow_big", "upload_mbs"),
        "{:.0f} MiB/s",
        _cell(raw, ("upload_mbs",), "NGINX WebDAV PUT to disk: {:.0f} MiB/s"),
        _get(raw, "upload_mbs"),
    )
    row(
        f"(b) download {b} MiB",
        ("flow_big", "download_mbs"),
        "{:.0f} MiB/s",
        _cell(raw, ("download_mbs",), "NGINX static GET: {:.0f} MiB/s"),
        _get(raw, "download_mbs"),
    )
    for c in (50, 200):
        row(f"(c) GET /sessions/{{sid}}, {c} clients: requests/s", ("status", c, "rps"), "{:.0f}/s")
        cells = []
        for data in (old, new):
            p50, p99 = _get(data, "status", c, "p50_ms"), _get(data, "status", c, "p99_ms")
            cell = (
                f"{p50:.1f} / {p99:.1f} ms"
                if p50 is not None and p99 is not None
                else _why(data, "status", c, "p99_ms")
            )
            errors = _get(data, "status", c, "errors")
            cells.append(cell + (f" ({errors})" if errors else ""))
        lines.append(f"| (c) {c} clients: latency p50 / p99 | {cells[0]} | {cells[1]} |  |  |")
    lines.append(
        f"| (d) log streams held, status within 1 s | {_streams_cell(old.get('streams'))} | "
        f"{_streams_cell(new.get('streams'))} |  |  |"
    )
    row(f"(e) peak RSS growth during the {b} MiB upload", ("flow_big", "rss_growth_mib"), "{:.1f} MiB")
    row("(e) … peak RSS (sum of server processes)", ("flow_big", "rss_peak_mib"), "{:.0f} MiB")
    eng = r.get("engine", {})
    for key, mib in (("flow_small", s), ("flow_big", b)):
        floor = engine_floor(eng, mib)
        row(f"(f) last byte → container created, {mib} MiB", (key, "last_byte_to_create_ms"), "{:.0f} ms")
        row(
            f"(f) last byte → container start, {mib} MiB",
            (key, "last_byte_to_start_ms"),
            "{:.0f} ms",
            f"the engine alone (curl): create + copy in + start = {floor:.0f} ms" if floor else _why(eng, "start_ms"),
            floor,
        )
        row(f"(f) container exit → complete, {mib} MiB", (key, "exit_to_complete_ms"), "{:.0f} ms")
    mnt, bare = r.get("mount", {}), _engine_bare(eng)
    for key, mib in (("flow_small", s), ("flow_big", b)):
        for field, what, ref in (
            (
                "last_byte_to_start_ms",
                "last byte → container start",
                f"the engine alone (curl): create + data directory + start = {bare:.0f} ms" if bare else "",
            ),
            ("exit_to_complete_ms", "container exit → complete", ""),
        ):
            lines.append(
                f"| (f) {what}, {mib} MiB, inputs mounted (INPUT_STAGING=mount; direct, no NGINX) | – | "
                f"{_cell(mnt, (key, field), '{:.0f} ms')} | {ref} | |"
            )
    stg = r.get("staging", {})
    lines.append(
        f"| staging {b} MiB into / out of the container (archive API) | – | "
        f"{_cell(stg, ('in_mbs',), '{:.0f}')} / {_cell(stg, ('out_mbs',), '{:.0f} MiB/s')} | "
        f"{_cell(dock, ('cp_in_mbs',), 'docker cp: {:.0f}')} / {_cell(dock, ('cp_out_mbs',), '{:.0f} MiB/s')}; "
        f"{_cell(eng, ('in_mbs',), 'the engine alone (curl): {:.0f}')} / {_cell(eng, ('out_mbs',), '{:.0f} MiB/s')}; "
        f"{_cell(raw, ('disk_copy_mbs',), 'cp on disk: {:.0f} MiB/s')} | "
        f"{_pct(_get(stg, 'in_mbs'), _get(eng, 'in_mbs'))} / "
        f"{_pct(_get(stg, 'out_mbs'), _get(eng, 'out_mbs'))} of the engine; "
        f"{_pct(_get(stg, 'in_mbs'), _get(raw, 'disk_copy_mbs'))} / "
        f"{_pct(_get(stg, 'out_mbs'), _get(raw, 'disk_copy_mbs'))} of cp |"
    )
    lines.append(
        f"| the model itself on {b} MiB (`docker run`, bind mount) | | | "
        f"{_cell(dock, ('bind_mount_run_s',), '{:.1f} s')} | |"
    )
    lines += ["", "Budget (inferserver):", "", "| budget | limit | measured | holds |", "| --- | --- | --- | --- |"]
    for what, limit, measured, holds in budget(r):
        lines.append(f"| {what} | {limit} | {measured} | {'yes' if holds else 'n/a' if holds is None else '**no**'} |")
    return "\n".join(lines) + "\n"


def _pct(a: Any, b: Any) -> str:
    q = _ratio(a, b)
    return f"{q:.0%}" if q is not None else "–"


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old, new, raw, stg = r.get("old", {}), r.get("new", {}), r.get("raw", {}), r.get("staging", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = ["upload", "download", "staging in", "staging out"]
    values = {
        "old server": [_get(old, "flow_big", "upload_mbs"), _get(old, "flow_big", "download_mbs"), None, None],
        "inferserver": [
            _get(new, "flow_big", "upload_mbs"),
            _get(new, "flow_big", "download_mbs"),
            _get(stg, "in_mbs"),
            _get(stg, "out_mbs"),
        ],
        "the engine's archive API alone": [None, None, _get(r, "engine", "in_mbs"), _get(r, "engine", "out_mbs")],
        "machine limit (NGINX, cp)": [
            _get(raw, "upload_mbs"),
            _get(raw, "download_mbs"),
            _get(raw, "disk_copy_mbs"),
            _get(raw, "disk_copy_mbs"),
        ],
    }
    width = 0.2
    for i, (name, vals) in enumerate(values.items()):
        xs = [g + (i - 1.5) * width for g in range(len(groups))]
        left.bar(xs, [v or 0 for v in vals], width, label=name)
    left.set_xticks(range(len(groups)), groups)
    left.set_ylabel("MiB/s")
    left.set_title(f"{r['big_mib']} MiB throughput (higher is better)")
    left.legend()
    labels = [f"{r['small_mib']} MiB", f"{r['big_mib']} MiB"]
    for i, (name, data) in enumerate((("old server", old), ("inferserver", new))):
        secs = [_get(data, "e2e_small", "seconds"), _get(data, "e2e_big", "seconds")]
        right.bar([x + (i - 0.5) * 0.35 for x in range(2)], [v or 0 for v in secs], 0.35, label=name)
    right.set_xticks(range(2), labels)
    right.set_ylabel("seconds")
    right.set_title("whole inference via the ablinfer client (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _from_json(r: dict[str, Any]) -> dict[str, Any]:
    """JSON keeps only string keys: the status loads are keyed by client count again."""
    for server in ("old", "new"):
        loads = _get(r, server, "status")
        if isinstance(loads, dict):
            r[server]["status"] = {int(k): v for k, v in loads.items()}
    return r


def write_results(r: dict[str, Any]) -> list[Path]:
    """Results of a run, or of latest.json read back (`python -m bench.report` renders it again)."""
    r = _from_json(r)
    RESULTS.mkdir(exist_ok=True)
    stamp = r["when"].replace(" ", "T").replace(":", "")
    text = table(r)
    paths = [RESULTS / "latest.json", RESULTS / "latest.md", RESULTS / "latest.png", RESULTS / f"{stamp}.md"]
    paths[0].write_text(json.dumps(r, indent=1, default=str) + "\n")
    paths[1].write_text(text)
    chart(r, paths[2])
    paths[3].write_text(text)
    readme = README.read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        README.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    return paths


if __name__ == "__main__":
    for path in write_results(json.loads((RESULTS / "latest.json").read_text())):
        print(path)
