"""Classical CT bone segmentation: Hounsfield threshold, largest connected components, hole filling.

    bone_threshold.py -i CT.nii.gz -o LABELS.nii.gz [--threshold HU] [--components N]
                      [--labels binary|components] [--fill-holes]

Reads a 3D volume with nibabel and writes a uint8 labelmap with the input's shape, affine (spacing and
orientation) and qform/sform codes. Only numpy, scipy and nibabel are needed.
"""

from __future__ import annotations

import argparse
import sys
import time

import nibabel as nib
import numpy as np
from scipy import ndimage

# Face-and-edge connectivity (18-neighbourhood): thin cortical bone stays one piece while a
# single shared corner does not join two bones.
STRUCTURE = ndimage.generate_binary_structure(3, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="input volume (.nii or .nii.gz)")
    parser.add_argument("-o", "--output", required=True, help="output labelmap (.nii or .nii.gz)")
    parser.add_argument("--threshold", type=float, default=300.0, help="lowest intensity counted as bone (HU for CT)")
    parser.add_argument("--components", type=int, default=1, help="keep the N largest connected components (0: all)")
    parser.add_argument(
        "--labels",
        choices=("binary", "components"),
        default="binary",
        help="binary: every kept voxel is 1; components: the k-th largest component is k",
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill cavities enclosed by bone (marrow)")
    args = parser.parse_args(argv)
    if args.components < 0:
        parser.error("--components must be 0 (keep all) or more")
    return args


def segment(volume: np.ndarray, threshold: float, components: int, labels: str, fill_holes: bool) -> np.ndarray:
    """The labelmap (uint8, same shape) of `volume`'s bone."""
    mask = volume >= threshold
    components_map, count = ndimage.label(mask, structure=STRUCTURE)
    sizes = np.bincount(components_map.ravel())[1:]  # voxels per component, background dropped
    order = np.argsort(sizes, kind="stable")[::-1]  # component indices, largest first
    keep = order if components == 0 else order[:components]
    if labels == "components" and len(keep) > 255:
        raise SystemExit(f"{len(keep)} components do not fit in a uint8 labelmap: ask for --components 255 or fewer")
    # lookup[c] is the label of component c (0 drops it).
    lookup = np.zeros(count + 1, dtype=np.uint8)
    lookup[keep + 1] = np.arange(1, len(keep) + 1) if labels == "components" else 1
    result = lookup[components_map]
    if fill_holes:
        for label in range(1, int(result.max()) + 1):
            filled = ndimage.binary_fill_holes(result == label)
            result[filled & (result == 0)] = label
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    image = nib.load(args.input)
    if len(image.shape) != 3:
        print(f"bone_threshold: {args.input} has shape {image.shape}; a 3D volume is needed", file=sys.stderr)
        return 2
    volume = np.asanyarray(image.dataobj)  # scaled by scl_slope/scl_inter, so HU for CT
    print(
        f"bone_threshold: read {image.shape} voxels, zooms {image.header.get_zooms()}, "
        f"orientation {''.join(nib.aff2axcodes(image.affine))}",
        flush=True,
    )
    result = segment(volume, args.threshold, args.components, args.labels, args.fill_holes)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out = type(image)(result, image.affine, header)
    out.header.set_slope_inter(1, 0)  # labels are labels: no scaling from the input's header
    out.set_qform(image.get_qform(), int(image.header["qform_code"]))
    out.set_sform(image.get_sform(), int(image.header["sform_code"]))
    nib.save(out, args.output)
    counts = {int(v): int(n) for v, n in zip(*np.unique(result, return_counts=True), strict=True) if v}
    print(
        f"bone_threshold: threshold {args.threshold}, components {args.components}, labels {args.labels}, "
        f"fill holes {args.fill_holes}: voxels per label {counts} in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
