"""``daqd plot``: a chunk-mode file (HDF5 or binary) or a zarr sink's store as a PNG.

The whole picture (the default) has three panels, one above the other:

1. the **loss map**: one row per chunk id from the file's first to its
   last (a chunk that never reached the file is a row of missing slots;
   one row per record where the file has no chunk ids, or where they jump
   too far: `daqd.tools.chunkfile.MAX_ROWS_PER_RECORD`), one column per heap
   slot (``heap * substreams + substream``: the substreams of a heap side by
   side), received slots in `PRESENT_RGB`, missing ones in `MISSING_RGB`;
2. the **fraction present** per chunk (0 for an absent one) against UTC, when the file carries
   ``sync_time`` and ``timestamp_rate``, else against data time (the
   record's timestamp, in ticks);
3. the **data overview**: the mean power per slot (``|x|**2`` averaged over
   the heap's samples, in dB) as a waterfall, for numeric and complex dtypes;
   missing slots are drawn in the loss map's colour.

Above `MAX_ROWS` rows, panels 1 and 3 show bins of rows (a slot is missing
in a bin where it is in any of its rows; its power is the mean).

``--loss-map`` writes the loss map alone, one pixel per slot and one row per
chunk id as above, the file read a block of records at a time (``present``
and ``chunk_id`` only, never ``data``).

A Zarr store (a directory, or an fsspec URL) is drawn as an HDF5 file is, from
its first to its last time index with a heap present, its chunk ids those of
the time indexes (``daqd.tools.chunkfile``).

Binary files carry no presence (``daqd/sinks/binary.py``): their picture is
the data overview alone, every slot taken as it was written, and
``--loss-map`` refuses them.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import click
import numpy as np

from daqd.errors import UsageProblem
from daqd.tools.chunkfile import ChunkFile, open_chunk_file

#: Colour of a received heap slot in the loss map (RGB, 0-255).
PRESENT_RGB = (217, 217, 217)
#: Colour of a missing heap slot: red, against the grey of received ones and the overview's
#: viridis.
MISSING_RGB = (214, 39, 40)
#: Rows (records or bins of records) drawn at most in the whole picture's maps.
MAX_ROWS = 1024
#: The whole picture's size in inches and its resolution.
FIGSIZE = (10.0, 11.0)
DPI = 100
#: Where each panel sits, in figure fractions (left, bottom, width, height): fixed, so a
#: panel's pixels can be found from these numbers alone.
LOSS_MAP_BOX = (0.09, 0.66, 0.76, 0.28)
FRACTION_BOX = (0.09, 0.40, 0.76, 0.18)
OVERVIEW_BOX = (0.09, 0.05, 0.76, 0.28)
COLORBAR_BOX = (0.87, 0.05, 0.02, 0.28)
INSTALL_HINT = "daqd plot needs matplotlib: pip install 'daqd[plot]'"


def _matplotlib() -> Any:
    """Matplotlib with the Agg backend (no display), or one line naming the install command."""
    try:
        import matplotlib
    except ImportError:
        raise UsageProblem(INSTALL_HINT) from None
    matplotlib.use("Agg")
    return matplotlib


def loss_map_rgb(present: np.ndarray) -> np.ndarray:
    """``(rows, heaps, substreams)`` presence as a ``(rows, heaps*substreams, 3)`` RGB image."""
    flat = present.reshape(present.shape[0], -1).astype(bool)
    return np.where(flat[..., None], np.array(PRESENT_RGB, np.uint8),
                    np.array(MISSING_RGB, np.uint8))


def write_loss_map(f: ChunkFile, output: str) -> tuple[int, int]:
    """Write the loss map alone to `output`, one pixel per slot; return (missing, slots)."""
    if not f.has_presence:
        raise UsageProblem(f"{f.path}: a {f.kind} file records no presence, so no loss map "
                           "(the hdf5 sink's files do)")
    _matplotlib()
    import matplotlib.image

    row_of = f.row_of_record()
    image = np.empty((int(row_of[-1]) + 1, f.slots, 3), np.uint8)
    image[:] = MISSING_RGB                  # chunks that never reached the file
    missing = image.shape[0] * f.slots
    for block in f.blocks(data=False, rows=max(1, (64 << 20) // f.slots)):
        assert block.present is not None
        rows = row_of[block.start:block.start + len(block.present)]
        image[rows] = loss_map_rgb(block.present)
        missing -= int(np.count_nonzero(block.present))
    matplotlib.image.imsave(output, image, format="png")
    return missing, image.shape[0] * f.slots


def mean_power(data: np.ndarray) -> np.ndarray:
    """Mean ``|x|**2`` over the last axis (samples), as float64."""
    if data.dtype.kind == "c":
        power = np.square(data.real, dtype=np.float64) + np.square(data.imag, dtype=np.float64)
    else:
        power = np.square(data, dtype=np.float64)
    return power.mean(axis=-1)


def _bin_rows(values: np.ndarray, size: int, how: str) -> np.ndarray:
    """Reduce runs of `size` rows to one (``min`` or ``nanmean``)."""
    if size <= 1:
        return values
    n = math.ceil(len(values) / size)
    pad = n * size - len(values)
    fill = 1 if how == "min" else np.nan
    padded = np.concatenate([values, np.full((pad, *values.shape[1:]), fill, values.dtype)])
    grouped = padded.reshape(n, size, *values.shape[1:])
    if how == "min":
        return grouped.min(axis=1)
    with warnings.catch_warnings():     # an all-missing bin is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(grouped, axis=1)


def write_picture(f: ChunkFile, output: str) -> tuple[int, int]:
    """Write the whole picture (the three panels); return (missing slots, slots)."""
    fig, missing, slots = draw_picture(f)
    fig.savefig(output, format="png")
    return missing, slots


def draw_picture(f: ChunkFile) -> tuple[Any, int, int]:
    """Draw the whole picture; return (the matplotlib Figure, missing slots, slots).

    The fraction panel's axes are labelled ``fraction``, its x axis UTC
    (``datetime64``) when the file gives each record's UTC, else data time.
    """
    _matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    numeric = f.dtype.kind in "biufc"
    if not numeric and not f.has_presence:
        raise UsageProblem(f"{f.path}: a {f.kind} file of dtype {f.dtype} records neither "
                           "numbers nor presence: nothing to draw")
    row_of = f.row_of_record()
    nrows = int(row_of[-1]) + 1
    present = np.zeros((nrows, f.slots), np.uint8)          # rows no record reached: missing
    if not f.has_presence:
        present[row_of] = 1
    power = np.full((nrows, f.slots), np.nan) if numeric else None
    ts = np.zeros(f.records, np.float64)
    utc: np.ndarray | None = None
    for block in f.blocks(data=numeric):
        rows_of_block = block.data if block.data is not None else block.present
        assert rows_of_block is not None    # an HDF5 or Zarr block has present
        end = block.start + len(rows_of_block)
        rows = row_of[block.start:end]
        if block.present is not None:
            present[rows] = block.present.reshape(len(rows), -1)
        if block.timestamp is not None:
            ts[block.start:end] = block.timestamp
        if block.utc is not None:
            utc = np.zeros(f.records) if utc is None else utc
            utc[block.start:end] = block.utc
        if power is not None and block.data is not None:
            p = mean_power(block.data).reshape(len(rows), -1)
            power[rows] = np.where(present[rows] != 0, p, np.nan)
    missing = int(present.size - np.count_nonzero(present))
    absent = nrows - f.records
    # Data time (and UTC) of every row, the absent chunks' between their neighbours'.
    every_row = np.arange(nrows)
    ts = np.interp(every_row, row_of, ts)
    utc = None if utc is None else np.interp(every_row, row_of, utc)

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    size = math.ceil(nrows / MAX_ROWS)
    binned = f" (bins of {size} chunks)" if size > 1 else ""
    fig.suptitle(f"{f.stream or 'daqd'}: {os.path.basename(f.path)}, {f.records} records of "
                 f"{f.heaps_per_chunk} heaps x {f.substreams} substreams, {f.dtype}; "
                 + (f"{missing} of {present.size} slots missing"
                    + (f" ({absent} chunk(s) absent)" if absent else "") if f.has_presence
                    else "no presence in a binary file"), fontsize=10)
    xlabel = "heap slot" if f.substreams == 1 else "heap slot x substream (substream fastest)"
    missing_colour = (MISSING_RGB[0] / 255, MISSING_RGB[1] / 255, MISSING_RGB[2] / 255)
    extent = (-0.5, f.slots - 0.5, nrows - 0.5, -0.5)        # integer ticks at cell centres
    first = 0 if f.chunk_ids is None else int(f.chunk_ids[0])
    by_id = f.chunk_ids is not None and np.array_equal(row_of, f.chunk_ids - first)
    ylabel = "chunk id" + (f" - {first}" if first else "") if by_id else "record"

    ax = fig.add_axes(LOSS_MAP_BOX)
    if f.has_presence:
        ax.imshow(loss_map_rgb(_bin_rows(present, size, "min")), aspect="auto",
                  interpolation="nearest", origin="upper",
                  extent=extent)
        ax.set_title(f"loss map: missing slots in red{binned}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "binary files record no presence: no loss map (hdf5 files do)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

    ax = fig.add_axes(FRACTION_BOX, label="fraction")
    if f.has_presence:
        fraction = present.mean(axis=1)
        if utc is not None:
            x: Any = (utc * 1e6).astype("datetime64[us]")
            ax.set_xlabel("UTC")
        else:
            x = ts
            ax.set_xlabel("data time (timestamp ticks)")
        ax.plot(x, fraction, drawstyle="steps-post", color="tab:blue", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("fraction of slots present per chunk", fontsize=9)
    else:
        ax.text(0.5, 0.5, "binary files record no presence nor timestamps",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_ylabel("present")

    ax = fig.add_axes(OVERVIEW_BOX)
    cax = fig.add_axes(COLORBAR_BOX)
    if power is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            db = 10 * np.log10(_bin_rows(power, size, "nanmean"))
        finite = db[np.isfinite(db)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        cmap = colormaps["viridis"].with_extremes(bad=missing_colour)
        image = ax.imshow(np.ma.masked_invalid(db), aspect="auto", interpolation="nearest",
                          origin="upper", extent=extent, cmap=cmap,
                          vmin=lo, vmax=max(hi, lo + 1e-6))
        bar = fig.colorbar(image, cax=cax, label="dB")
        assert isinstance(bar.formatter, ScalarFormatter)  # a linear colour bar's
        bar.formatter.set_useOffset(False)      # dB values, not an offset and differences
        ax.set_title(f"mean power per slot (|x|^2 over {f.samples} samples){binned}",
                     fontsize=9)
    else:
        ax.text(0.5, 0.5, f"no overview for dtype {f.dtype}", ha="center", va="center",
                transform=ax.transAxes)
        cax.set_axis_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, missing, present.size


@click.command("plot")
@click.argument("file", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="PNG to write (default: FILE.png).")
@click.option("--loss-map", "loss_map", is_flag=True,
              help="Only the loss map, one pixel per heap slot and one row per record, the "
                   "file read a block at a time (for large files; HDF5 files and Zarr "
                   "stores only).")
def command(file: str, output: str | None, loss_map: bool) -> None:
    """Draw a chunk-mode file (HDF5 or binary) or a zarr sink's store as a PNG.

    The loss map (records x heap slots x substreams, missing slots in red),
    the fraction of slots present per record against UTC or data time, and
    the mean power per slot as a waterfall.
    """
    _matplotlib()
    output = output or file + ".png"
    if os.path.abspath(output) == os.path.abspath(file):
        raise UsageProblem(f"-o {output}: that is the input file")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise UsageProblem(f"-o {output}: no directory {parent}")
    with open_chunk_file(file) as f:
        if f.records == 0:
            raise UsageProblem(f"{file}: holds no records")
        try:
            missing, total = (write_loss_map if loss_map else write_picture)(f, output)
        except OSError as exc:
            raise UsageProblem(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    what = (f"{missing} of {total} heap slots missing (absent chunks' too)" if f.has_presence
            else "no presence recorded (binary file)")
    click.echo(f"daqd: wrote {output}: {f.records} records; {what}", err=True)
