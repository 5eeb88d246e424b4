"""Durable session state behind SQLAlchemy 2 (async): SQLite in SESSION_PATH by default, PostgreSQL by URL.

Every change that races between requests or worker processes is one conditional UPDATE (claim an upload
only if nobody holds a live claim; land it only if the claim is still ours and the session still waiting;
queue a session only if all its inputs have landed; start a run only if it is still queued), so both
databases give the same answers without explicit locking. Creating a session within MAX_SESSIONS is the one
count-then-insert: it runs serialized (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction advisory lock).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .changefeed import CHANNEL
from .changes import ChangeToken
from .quotas import out_of_space_is_507
from .state import LIVE, QueuePlace, Status

# pg_advisory_xact_lock key of session creation: any constant no other program on the database uses.
CREATE_LOCK_KEY = 0x696E6672_63726561  # "infrcrea"


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the spec as it was at creation
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    info: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    log_offset: Mapped[int | None] = mapped_column(Integer, nullable=True)  # log size when the container started
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class InputRow(Base):
    """One enabled input of a session: landed or not, and who is uploading it right now."""

    __tablename__ = "inputs"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    landed: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)


class GpuHold(Base):
    """A GPU of the pool held by a run. Its own table (not a column of `sessions`): create_all adds a new table
    to an existing database but never a new column. The device is the key: no GPU has two holders."""

    __tablename__ = "gpu_holds"

    device: Mapped[str] = mapped_column(String(100), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)


class EngineRun(Base):
    """Where a working session's run was placed: its engine, its container there and the attempt it is. Its own
    table, like GpuHold: create_all adds tables, never columns. Recovery and engine loss read it back."""

    __tablename__ = "engine_runs"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    engine: Mapped[str] = mapped_column(String(100), index=True)
    container_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class Placed:
    """A run's place as EngineRun records it."""

    engine: str
    container_id: str | None
    attempt: int


class QueueSlot(Base):
    """The dispatcher's forecast for a queued session, read by every worker: its place and estimated start."""

    __tablename__ = "queue_forecast"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SessionOwner(Base):
    """Who created a session, when access control was on: non-operators may cancel only their own."""

    __tablename__ = "session_owners"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    user: Mapped[str] = mapped_column(String(300))


class TusUpload(Base):
    """A resumable (tus) upload of one input: its declared length and the offset acknowledged so far (bytes fsynced
    before it was written here). `owner` is the PATCH writing it now (at most one: a conditional UPDATE claims it)."""

    __tablename__ = "tus_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    input_name: Mapped[str] = mapped_column(String(200))
    length: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    expires: Mapped[float] = mapped_column(Float, index=True)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)  # landed as the session's input


@dataclass(frozen=True)
class SessionView:
    """What one read of a session returns: its row and its inputs still needed."""

    row: SessionRow
    needed: list[str]

    @property
    def status(self) -> Status:
        return Status(self.row.status)


SCHEMA_LOCK_KEY = 0x696E66657273  # any constant other than the dispatch lock's (scheduling/leadership.py)


def default_url(session_path: str) -> str:
    return f"sqlite+aiosqlite:///{session_path}/inferserver.db"


class Store:
    def __init__(self, url: str, changes: ChangeToken | None = None, announce_as: str | None = None) -> None:
        self.url = url
        # With PostgreSQL and a name: every visible change is announced to every host (sessions/changefeed.py).
        self.announce_as = announce_as
        # Replaced after every committed change a client could see: status answers are cached under it.
        self.changes = changes or ChangeToken(None)
        sqlite = url.startswith("sqlite")
        # SQLite serves one writer at a time and every aiosqlite connection is a thread of its own: a few
        # connections answer status polls faster than many (measured: ~600 → ~790 requests/s at 50 clients).
        pool = {"pool_size": 2, "max_overflow": 2} if sqlite else {"pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(url, **pool)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                # Hosts starting together: the file lock around this (app.create_schema) is one host's only.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self, *, visible: bool = True) -> AsyncIterator[AsyncSession]:
        """A transaction; once it is committed, `changes` is replaced unless nothing a client sees changed.

        A database whose disk is full refuses with InsufficientStorage (507), not a bare driver error (500)."""
        with out_of_space_is_507("the session database to record the change"):
            async with self.sessionmaker.begin() as db:
                yield db
                if visible and self.announce_as is not None:
                    # Inside the transaction: PostgreSQL delivers it on commit, and only then.
                    await db.execute(
                        text("SELECT pg_notify(:channel, :me)"), {"channel": CHANNEL, "me": self.announce_as}
                    )
        if visible:
            self.changes.replace()

    # -- sessions ---------------------------------------------------------------------------

    async def add(self, row: SessionRow, inputs: list[str], *, max_live: int | None = None) -> bool:
        """Insert a session and its inputs; with `max_live`, only while fewer live sessions exist. True if added.

        The count and the insert are one serialized step: concurrent creates (in any worker process) cannot
        all see room for one more."""
        async with self._write() as db:
            if max_live is not None:
                await self._serialize(db)
                live = await db.scalar(select(func.count()).where(SessionRow.status.in_([s.value for s in LIVE])))
                if int(live or 0) >= max_live:
                    return False
            db.add(row)
            await db.flush()  # the session row first: inputs refer to it
            db.add_all(InputRow(session_id=row.id, name=n, position=i) for i, n in enumerate(inputs))
        return True

    async def _serialize(self, db: AsyncSession) -> None:
        """Make this transaction the only one of its kind until it ends."""
        if self.engine.dialect.name == "sqlite":
            # Take the write lock now, before the count: a deferred transaction would read first and let
            # another writer in between (busy_timeout makes the next one wait its turn).
            await db.execute(text("BEGIN IMMEDIATE"))
        else:
            await db.execute(select(func.pg_advisory_xact_lock(CREATE_LOCK_KEY)))

    async def get(self, session_id: str) -> SessionView | None:
        async with self.sessionmaker() as db:
            row = await db.get(SessionRow, session_id)
            if row is None:
                return None
            needed = await db.scalars(
                select(InputRow.name)
                .where(InputRow.session_id == session_id, InputRow.landed.is_(False))
                .order_by(InputRow.position)
            )
            return SessionView(row, list(needed))

    async def status_of(self, session_id: str) -> Status | None:
        async with self.sessionmaker() as db:
            status = await db.scalar(select(SessionRow.status).where(SessionRow.id == session_id))
            return Status(status) if status is not None else None

    async def statuses(self, session_ids: list[str]) -> dict[str, Status]:
        """Statuses of many sessions in one query (absent ids are gone)."""
        async with self.sessionmaker() as db:
            rows = await db.execute(select(SessionRow.id, SessionRow.status).where(SessionRow.id.in_(session_ids)))
            return {sid: Status(status) for sid, status in rows}

    async def update(
        self, session_id: str, *, when: set[Status] | None = None, visible: bool = True, **values: Any
    ) -> bool:
        """Set fields (and `updated`); with `when`, only if the status is one of those. True if it changed.

        `visible=False` for a change no status answer shows (only `updated`)."""
        query = update(SessionRow).where(SessionRow.id == session_id)
        if when is not None:
            query = query.where(SessionRow.status.in_([s.value for s in when]))
        values = {k: (v.value if isinstance(v, Status) else v) for k, v in values.items()}
        async with self._write(visible=visible) as db:
            result = await db.execute(query.values(updated=time.time(), **values))
            return _one_row(result)

    async def touch(self, session_id: str) -> None:
        await self.update(session_id, visible=False)

    async def remove(self, session_id: str) -> None:
        async with self._write() as db:
            await db.execute(delete(QueueSlot).where(QueueSlot.session_id == session_id))
            await db.execute(delete(GpuHold).where(GpuHold.session_id == session_id))
            await db.execute(delete(EngineRun).where(EngineRun.session_id == session_id))
            await db.execute(delete(InputRow).where(InputRow.session_id == session_id))
            await db.execute(delete(SessionOwner).where(SessionOwner.session_id == session_id))
            await db.execute(delete(TusUpload).where(TusUpload.session_id == session_id))
            await db.execute(delete(SessionRow).where(SessionRow.id == session_id))

    async def with_status(self, *statuses: Status) -> list[SessionRow]:
        async with self.sessionmaker() as db:
            rows = await db.scalars(
                select(SessionRow)
                .where(SessionRow.status.in_([s.value for s in statuses]))
                .order_by(SessionRow.queued_at, SessionRow.created, SessionRow.id)
            )
            return list(rows)

    async def count_by_status(self) -> dict[Status, int]:
        async with self.sessionmaker() as db:
            rows = await db.execute(select(SessionRow.status, func.count()).group_by(SessionRow.status))
            counts = {s: 0 for s in Status}
            counts.update({Status(status): n for status, n in rows})
            return counts

    async def recent_final(self, limit: int) -> list[SessionRow]:
        """The latest complete and failed sessions, newest first (the operator view's history)."""
        async with self.sessionmaker() as db:
            rows = await db.scalars(
                select(SessionRow)
                .where(SessionRow.status.in_([Status.COMPLETE.value, Status.FAILED.value]))
                .order_by(SessionRow.finished.desc(), SessionRow.updated.desc())
                .limit(limit)
            )
            return list(rows)

    # -- owners -----------------------------------------------------------------------------

    async def set_owner(self, session_id: str, user: str) -> None:
        async with self._write(visible=False) as db:
            db.add(SessionOwner(session_id=session_id, user=user))

    async def owner_of(self, session_id: str) -> str | None:
        return (await self.owners([session_id])).get(session_id)

    async def owners(self, session_ids: list[str]) -> dict[str, str]:
        """Session id -> its creator, for the sessions that have one recorded."""
        async with self.sessionmaker() as db:
            rows = await db.execute(
                select(SessionOwner.session_id, SessionOwner.user).where(SessionOwner.session_id.in_(session_ids))
            )
            return {sid: user for sid, user in rows}

    # -- the queue --------------------------------------------------------------------------

    async def queue(self) -> list[SessionRow]:
        """Queued sessions, first to run first."""
        return await self.with_status(Status.READY)

    async def position(self, session_id: str) -> int | None:
        """1 for the next session to start; None when not queued."""
        place = await self.queue_place(session_id)
        return place.position if place else None

    async def queue_place(self, session_id: str) -> QueuePlace | None:
        """The dispatcher's forecast; until it has one for this session, its place in FIFO order."""
        async with self.sessionmaker() as db:
            me = await db.get(SessionRow, session_id)
            if me is None or me.status != Status.READY.value or me.queued_at is None:
                return None
            slot = await db.get(QueueSlot, session_id)
            if slot is not None:
                return QueuePlace(slot.position, slot.starts_at)
            ahead = await db.scalar(
                select(func.count()).where(
                    SessionRow.status == Status.READY.value,
                    tuple_(SessionRow.queued_at, SessionRow.id) < tuple_(me.queued_at, me.id),
                )
            )
            return QueuePlace(int(ahead or 0) + 1)

    async def forecast(self) -> dict[str, QueuePlace]:
        """The dispatcher's whole forecast at once (the operator view shows every queued session)."""
        async with self.sessionmaker() as db:
            slots = await db.scalars(select(QueueSlot))
            return {slot.session_id: QueuePlace(slot.position, slot.starts_at) for slot in slots}

    async def set_forecast(self, places: dict[str, QueuePlace]) -> None:
        """Replace the whole forecast (the queue is short; one transaction keeps readers consistent)."""
        async with self._write() as db:
            await db.execute(delete(QueueSlot))
            live = set(await db.scalars(select(SessionRow.id).where(SessionRow.id.in_(list(places)))))
            db.add_all(
                QueueSlot(session_id=sid, position=p.position, starts_at=p.starts_at)
                for sid, p in places.items()
                if sid in live
            )

    # -- GPUs -------------------------------------------------------------------------------

    async def hold_gpus(self, session_id: str, devices: tuple[str, ...]) -> None:
        async with self._write() as db:
            db.add_all(GpuHold(device=d, session_id=session_id) for d in devices)

    async def release_gpus(self, session_id: str) -> None:
        async with self._write() as db:
            await db.execute(delete(GpuHold).where(GpuHold.session_id == session_id))

    async def gpu_holds(self) -> dict[str, list[str]]:
        """Session id -> the devices it holds."""
        async with self.sessionmaker() as db:
            held: dict[str, list[str]] = {}
            for device, session_id in await db.execute(select(GpuHold.device, GpuHold.session_id)):
                held.setdefault(session_id, []).append(device)
            return held

    # -- engines --------------------------------------------------------------------------

    async def place_run(self, session_id: str, engine: str, attempt: int) -> None:
        """Record (replacing an earlier attempt's) the engine a run starts on; its container comes later."""
        async with self._write(visible=False) as db:
            await db.execute(delete(EngineRun).where(EngineRun.session_id == session_id))
            db.add(EngineRun(session_id=session_id, engine=engine, attempt=attempt))

    async def run_container(self, session_id: str, container_id: str) -> None:
        async with self._write(visible=False) as db:
            await db.execute(
                update(EngineRun).where(EngineRun.session_id == session_id).values(container_id=container_id)
            )

    async def unplace_run(self, session_id: str) -> None:
        async with self._write(visible=False) as db:
            await db.execute(delete(EngineRun).where(EngineRun.session_id == session_id))

    async def placed_runs(self) -> dict[str, Placed]:
        """Session id -> where its run was placed."""
        async with self.sessionmaker() as db:
            rows = await db.scalars(select(EngineRun))
            return {r.session_id: Placed(r.engine, r.container_id, r.attempt) for r in rows}

    async def run_times(self, limit: int) -> list[tuple[str, float]]:
        """(model id, seconds) of the latest complete runs, oldest first: the seed of the run-time estimates."""
        async with self.sessionmaker() as db:
            rows = await db.execute(
                select(SessionRow.model_id, SessionRow.finished - SessionRow.started)
                .where(
                    SessionRow.status == Status.COMPLETE.value,
                    SessionRow.started.is_not(None),
                    SessionRow.finished.is_not(None),
                )
                .order_by(SessionRow.finished.desc())
                .limit(limit)
            )
            # The WHERE already leaves out rows without both times; the test tells the type checker so.
            return [(model_id, float(seconds)) for model_id, seconds in reversed(list(rows)) if seconds is not None]

    # -- uploads ----------------------------------------------------------------------------

    async def claim_upload(self, session_id: str, name: str, owner: str, stale_before: float) -> bool:
        """Take the input for an upload while the session waits for inputs, unless a live upload holds it (a
        dead one's claim has gone stale)."""
        now = time.time()
        async with self._write() as db:
            result = await db.execute(
                update(InputRow)
                .where(
                    InputRow.session_id == session_id,
                    InputRow.name == name,
                    or_(InputRow.owner.is_(None), InputRow.heartbeat < stale_before),
                    _waiting(session_id),
                )
                .values(owner=owner, heartbeat=now)
            )
            return _one_row(result)

    async def land_upload(self, session_id: str, name: str, owner: str, *, finished_tus: str | None = None) -> bool:
        """Mark the input landed if the claim is still `owner`'s and the session still waits for inputs.

        The one step that decides an upload is taken: it comes before its file is renamed into place and
        before the client is answered. The claim stays held (release_upload ends it), so the session cannot
        be queued until the file is in place. `finished_tus`: the tus upload that brought the file, marked
        finished (its whole length acknowledged) in the same transaction."""
        async with self._write() as db:  # visible: the input is no longer `needed`
            result = await db.execute(
                update(InputRow)
                .where(
                    InputRow.session_id == session_id,
                    InputRow.name == name,
                    InputRow.owner == owner,
                    _waiting(session_id),
                )
                .values(landed=True, heartbeat=time.time())
            )
            if not _one_row(result):
                return False
            if finished_tus is not None:
                await db.execute(
                    update(TusUpload)
                    .where(TusUpload.id == finished_tus)
                    .values(finished=True, received=TusUpload.length, owner=None, heartbeat=None)
                )
            return True

    async def heartbeat(self, session_id: str, name: str, owner: str) -> None:
        async with self._write(visible=False) as db:
            await db.execute(
                update(InputRow)
                .where(InputRow.session_id == session_id, InputRow.name == name, InputRow.owner == owner)
                .values(heartbeat=time.time())
            )

    async def release_upload(self, session_id: str, name: str, owner: str) -> bool:
        """End an upload (landed or not); when it was the last thing the session waited for, queue the session.
        True if queued."""
        now = time.time()
        async with self._write() as db:
            await db.execute(
                update(InputRow)
                .where(InputRow.session_id == session_id, InputRow.name == name, InputRow.owner == owner)
                .values(owner=None, heartbeat=None)
            )
            # Even a failed re-upload may have been the last thing holding a complete session back.
            return await _queue_if_complete(db, session_id, now)

    async def queue_if_complete(self, session_id: str) -> bool:
        async with self._write() as db:
            return await _queue_if_complete(db, session_id, time.time())

    async def upload_claims(self) -> list[tuple[str, str, str]]:
        """(session id, input name, owner) of every upload in progress."""
        async with self.sessionmaker() as db:
            rows = await db.execute(
                select(InputRow.session_id, InputRow.name, InputRow.owner).where(InputRow.owner.is_not(None))
            )
            return [(sid, name, owner) for sid, name, owner in rows if owner is not None]  # as the WHERE says

    async def active_uploads(self, session_id: str, stale_before: float) -> int:
        async with self.sessionmaker() as db:
            n = await db.scalar(
                select(func.count()).where(
                    InputRow.session_id == session_id, InputRow.owner.is_not(None), InputRow.heartbeat >= stale_before
                )
            )
            return int(n or 0)


def _one_row(result: Any) -> bool:
    """An UPDATE's result changed exactly one row (rowcount is on the cursor result, untyped in SQLAlchemy)."""
    return int(result.rowcount) == 1


def _waiting(session_id: str) -> Any:
    """The session still takes inputs (a condition for a statement on its inputs)."""
    return exists().where(and_(SessionRow.id == session_id, SessionRow.status == Status.WAITING.value))


async def _queue_if_complete(db: Any, session_id: str, now: float) -> bool:
    missing = exists().where(
        and_(InputRow.session_id == session_id, or_(InputRow.landed.is_(False), InputRow.owner.is_not(None)))
    )
    result = await db.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.status == Status.WAITING.value, ~missing)
        .values(status=Status.READY.value, queued_at=now, updated=now, info="")
    )
    return _one_row(result)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers in other worker processes go on while one writes; wait instead of failing on a lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class TusStore:
    """The `tus_uploads` table (sessions/tusuploads.py is its one user). None of its changes is one a status
    answer shows, so none replaces the change token."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, row: TusUpload) -> None:
        async with self._store._write(visible=False) as db:
            db.add(row)

    async def get(self, upload_id: str) -> TusUpload | None:
        async with self._store.sessionmaker() as db:
            return await db.get(TusUpload, upload_id)

    async def claim(self, upload_id: str, offset: int, owner: str, stale_before: float, dead_owner: str | None) -> bool:
        """Take the upload for one PATCH at `offset`, unless the offset moved or a live PATCH holds it (a claim not
        renewed since `stale_before`, or held by `dead_owner`, a process known to be gone, does not count)."""
        held_by_nobody = [TusUpload.owner.is_(None), TusUpload.heartbeat < stale_before]
        if dead_owner is not None:
            held_by_nobody.append(TusUpload.owner == dead_owner)
        async with self._store._write(visible=False) as db:
            result = await db.execute(
                update(TusUpload)
                .where(
                    TusUpload.id == upload_id,
                    TusUpload.received == offset,
                    TusUpload.finished.is_(False),
                    or_(*held_by_nobody),
                )
                .values(owner=owner, heartbeat=time.time())
            )
            return _one_row(result)

    async def heartbeat(self, upload_id: str, owner: str) -> None:
        async with self._store._write(visible=False) as db:
            await db.execute(
                update(TusUpload)
                .where(TusUpload.id == upload_id, TusUpload.owner == owner)
                .values(heartbeat=time.time())
            )

    async def advance(self, upload_id: str, session_id: str, owner: str, received: int, expires: float) -> bool:
        """Acknowledge bytes up to `received` (already fsynced) while `owner` holds the upload, and end its claim; the
        session counts as active (idle clean-up spares it). One transaction: a PATCH costs two writes in all."""
        now = time.time()
        async with self._store._write(visible=False) as db:
            result = await db.execute(
                update(TusUpload)
                .where(TusUpload.id == upload_id, TusUpload.owner == owner)
                .values(received=received, expires=expires, owner=None, heartbeat=None)
            )
            if not _one_row(result):
                return False
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(updated=now))
            return True

    async def release(self, upload_id: str, owner: str) -> None:
        async with self._store._write(visible=False) as db:
            await db.execute(
                update(TusUpload)
                .where(TusUpload.id == upload_id, TusUpload.owner == owner)
                .values(owner=None, heartbeat=None)
            )

    async def remove(self, upload_id: str) -> bool:
        async with self._store._write(visible=False) as db:
            return _one_row(await db.execute(delete(TusUpload).where(TusUpload.id == upload_id)))

    async def expired(self, now: float, stale_before: float) -> list[TusUpload]:
        """Unfinished uploads past their expiry that no live PATCH holds."""
        async with self._store.sessionmaker() as db:
            rows = await db.scalars(
                select(TusUpload).where(
                    TusUpload.expires < now,
                    or_(TusUpload.owner.is_(None), TusUpload.heartbeat < stale_before),
                )
            )
            return list(rows)

    async def ids(self) -> set[str]:
        async with self._store.sessionmaker() as db:
            return set(await db.scalars(select(TusUpload.id)))

    async def outstanding(self, now: float) -> int:
        """Bytes unfinished, unexpired uploads have announced and not yet sent: the disk they will take."""
        async with self._store.sessionmaker() as db:
            total = await db.scalar(
                select(func.sum(TusUpload.length - TusUpload.received)).where(
                    TusUpload.finished.is_(False), TusUpload.expires >= now
                )
            )
            return int(total or 0)
