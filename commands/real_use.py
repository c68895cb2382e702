"""How well the model reads digits that look like real use, through the predict path.

Takes MNIST *test* digits (never trained on) and first rewrites each as another writer or
scanner might have made it, an equal share per writing style:
- as written; low resolution (drawn 8-12 pixels tall, then scaled up: blurred);
- a thin pen and a thick pen; slant (sheared 10-20 degrees either way);
- a 1 with a flag and a base, a crossed 7 (styles common outside the US; 1s and 7s only).
  The default trains on crossed 7s of its own (`preprocess.crossed_sevens`, drawn by other
  code with other randomness: mnist_dense/data/glyphs.py), so that style says the lever works,
  not that every writer's 7 is read.
Then it redraws each as a photo or scan might show it: larger, on a bigger canvas, off-centre,
mostly dark ink on light paper of some colour (some light on dark, some plain gray), softened
by blur, with sensor noise, saved as PNG, JPEG, BMP or GIF. It runs every file through
`commands.predict` exactly as a user would and prints the share read correctly per writing
style and per paper style. `--digits validation` draws from the validation digits instead,
to choose settings on (the test digits only report): the raw training images that
preprocess holds out, never its normalized arrays, so each model is scored on the same raw
digits whatever preprocess does to them.

    python -m commands.real_use [--count 7000] [--out data/real-use] [--model PATH_OR_URI]
"""

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from commands.predict import default_model, predict_files
from mnist_dense.config import RAW_DIR, SIDE, load_params
from mnist_dense.data.mnist import load_images_and_labels, split_indices
from mnist_dense.errors import PipelineError
from mnist_dense.files import atomic_path
from mnist_dense.runtime.cli import run

FORMATS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}
MARKER = ".real-use"  # marks a folder real_use made, the only kind it replaces


WRITING = [
    "as written",
    "low resolution",
    "thin pen",
    "thick pen",
    "slant",
    "1 with flag and base",
    "crossed 7",
]
ONLY = {"1 with flag and base": 1, "crossed 7": 7}  # styles of one digit
PAPERS = ["dark on light", "light on dark", "gray"]
# 1,000 per writing style: a style's share known to about +-1.4 points (95 % interval, near 95 %);
# at 200 per style that interval is +-3 points, too wide to tell 94 % from 96 %
COUNT = 7000
SCALE = 4  # writing styles are drawn at 4x MNIST's resolution


def rewrite(digit: np.ndarray, style: str, rng: np.random.Generator) -> Image.Image:
    """A 28x28 MNIST digit (uint8, light ink on black) as another writer's: grayscale."""
    if style == "low resolution":  # the digit (20 of the 28 pixels) drawn 8-12 pixels tall
        side = round(SIDE * rng.uniform(8, 12) / 20)
        return Image.fromarray(digit).resize((side, side), Image.Resampling.BOX)
    big = Image.fromarray(digit).resize((SIDE * SCALE,) * 2, Image.Resampling.BICUBIC)
    if style == "thin pen":
        return big.filter(ImageFilter.MinFilter(5))  # half a pixel off each side
    if style == "thick pen":
        return big.filter(ImageFilter.MaxFilter(7))  # three quarters of a pixel more each side
    if style == "slant":
        slope = math.tan(math.radians(rng.uniform(10, 20) * rng.choice([-1, 1])))
        centre = SIDE * SCALE / 2
        return big.transform(
            big.size, Image.Transform.AFFINE, (1, slope, -slope * centre, 0, 1, 0),
            Image.Resampling.BICUBIC,
        )  # fmt: skip
    if style in ONLY:
        return _add_strokes(big, style)
    return big


def _add_strokes(big: Image.Image, style: str) -> Image.Image:
    """A flag and a base on a 1, or a bar across a 7's stem, in the digit's own ink."""
    ink = np.asarray(big) > 128
    rows = np.flatnonzero(ink.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    height = bottom - top
    width = max(6, round(ink.sum() / max(1, ink.any(axis=1).sum()) * 0.7))  # about its stroke

    def centre_x(row: int) -> float:
        band = ink[max(0, row - 4) : row + 5]
        return float(np.flatnonzero(band.any(axis=0)).mean())

    drawn = big.copy()
    draw = ImageDraw.Draw(drawn)
    if style == "crossed 7":
        y = round(top + 0.5 * height)
        x = centre_x(y)
        draw.line([(x - 0.22 * height, y), (x + 0.22 * height, y)], fill=255, width=width)
    else:
        x_top, x_bottom = centre_x(top + 2), centre_x(bottom - 2)
        flag_end = (x_top - 0.28 * height, top + 0.25 * height)
        draw.line([(x_top, top + width / 2), flag_end], fill=255, width=width)
        base_y = bottom - width / 2
        draw.line([(x_bottom - 0.28 * height, base_y), (x_bottom + 0.28 * height, base_y)],
                  fill=255, width=width)  # fmt: skip
    return drawn


def redraw(written: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A written digit (grayscale, light ink on black) as a 'real-use' RGB photo; its paper."""
    size = int(rng.integers(56, 225))  # the 28x28 field drawn 2x to 8x larger
    canvas_w, canvas_h = (int(size * rng.uniform(1.3, 2.5)) for _ in range(2))
    ink_mask = written.resize((size, size), Image.Resampling.BICUBIC)
    mask = Image.new("L", (canvas_w, canvas_h), 0)
    corner = (int(rng.integers(0, canvas_w - size)), int(rng.integers(0, canvas_h - size)))
    mask.paste(ink_mask, corner)

    style = rng.choice(PAPERS, p=[0.7, 0.15, 0.15])
    if style == "dark on light":
        paper, ink = rng.integers(150, 256, 3), rng.integers(0, 90, 3)
    elif style == "light on dark":
        paper, ink = rng.integers(0, 90, 3), rng.integers(170, 256, 3)
    else:
        level = int(rng.integers(170, 256))
        paper, ink = np.full(3, level), np.full(3, int(rng.integers(0, 60)))
    alpha = np.asarray(mask, np.float32)[..., None] / 255
    rgb = paper * (1 - alpha) + ink * alpha
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, size / 40))))
    noise = rng.normal(0, rng.uniform(0, 12), (canvas_h, canvas_w, 1))
    noisy = np.asarray(image, np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), str(style)


def digits_from(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 28x28 digits, labels) of the test set or the validation set (params.yaml's
    split of the training images), from the raw files."""
    if source == "validation":
        images, labels = load_images_and_labels(RAW_DIR, "train")
        _, val_idx = split_indices(labels, load_params().preprocess)
        return images[val_idx], labels[val_idx]
    return load_images_and_labels(RAW_DIR, "t10k")


def build(
    count: int, out: Path, seed: int = 0, source: str = "test"
) -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """Write `count` rewritten and redrawn digits into `out`, an equal share per writing
    style; return their files, labels and (writing style, paper style)."""
    made_here = (out / MARKER).is_file()
    if out.exists() and not made_here and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(
            f"--out {out}: exists and was not made by real_use; name a new or empty folder"
        )
    images, labels = digits_from(source)
    rng = np.random.default_rng(seed)
    per_style = max(1, count // len(WRITING))
    names, chosen_labels, styles = [], [], []
    with atomic_path(out) as temp:  # replaces a folder real_use made before, as a whole
        temp.mkdir()
        (temp / MARKER).write_text("made by python -m commands.real_use; replaced on each run\n")
        for writing in WRITING:
            pool = np.flatnonzero(labels == ONLY[writing]) if writing in ONLY else len(images)
            for index in rng.choice(pool, size=per_style, replace=False):
                image, paper = redraw(rewrite(images[index], writing, rng), rng)
                fmt = str(rng.choice(list(FORMATS)))
                names.append(f"{len(names):05d}-label{labels[index]}.{FORMATS[fmt]}")
                save = {"quality": 90} if fmt == "JPEG" else {}
                image.save(temp / names[-1], format=fmt, **save)
                chosen_labels.append(labels[index])
                styles.append((writing, paper))
    return [out / name for name in names], np.array(chosen_labels), styles


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.real_use", description=__doc__)
    parser.add_argument("--count", type=int, default=COUNT, help="images, all styles")
    parser.add_argument("--out", type=Path, default=Path("data/real-use"))
    parser.add_argument("--model", help="default: the registered champion, else models/model.keras")
    parser.add_argument("--digits", choices=["test", "validation"], default="test")
    args = parser.parse_args()
    model, described = (args.model, args.model) if args.model else default_model()
    files, labels, styles = build(args.count, args.out, source=args.digits)
    results = predict_files(model, files)
    correct = read_correctly(results, labels)
    for kind in ("writing", "paper"):
        print(f"by {kind}:")
        for name, (share, count) in by_style(correct, styles, kind).items():
            print(f"  {name}: {share:.2%} of {count}")
    failed = sum(r.error is not None for r in results)
    print(
        f"real-use accuracy: {correct.mean():.2%} ({correct.sum()} of {len(files)} images "
        f"of {args.digits} digits in {args.out}; {failed} unreadable) with {described}"
    )


def read_correctly(results: list, labels: np.ndarray) -> np.ndarray:
    """Per image, whether predict read its label (an unreadable file counts as wrong)."""
    return np.array([r.digit == label for r, label in zip(results, labels, strict=True)])


def by_style(
    correct: np.ndarray, styles: list[tuple[str, str]], kind: str
) -> dict[str, tuple[float, int]]:
    """{style: (share read correctly, images)} per writing or paper style."""
    column, names = (0, WRITING) if kind == "writing" else (1, PAPERS)
    shares = {}
    for name in names:
        chosen = np.array([style[column] == name for style in styles])
        if chosen.any():
            shares[name] = (float(correct[chosen].mean()), int(chosen.sum()))
    return shares


if __name__ == "__main__":
    run(main)
