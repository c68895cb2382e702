"""How well the model reads digits that look like real use, through the predict path.

Takes MNIST *test* digits (never trained on) and redraws each as a photo or scan might show
it: larger, on a bigger canvas, off-centre, mostly dark ink on light paper of some colour
(some light on dark, some plain gray), softened by blur, with sensor noise, saved as PNG,
JPEG, BMP or GIF. Then it runs every file through `commands.predict` exactly as a user would
and prints the share read correctly.

    python -m commands.real_use [--count 1000] [--out data/real-use] [--model models/model.keras]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from commands.predict import predict_files
from mnist_dense.cli import PipelineError, run
from mnist_dense.files import atomic_path
from mnist_dense.paths import MODEL, RAW_DIR
from stages.preprocess import load_images_and_labels

FORMATS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}
MARKER = ".real-use"  # marks a folder real_use made, the only kind it replaces


def redraw(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One 28x28 MNIST digit (uint8, light on dark) as a 'real-use' RGB image; its style."""
    size = int(rng.integers(56, 225))  # the 28x28 field drawn 2x to 8x larger
    canvas_w, canvas_h = (int(size * rng.uniform(1.3, 2.5)) for _ in range(2))
    ink_mask = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    mask = Image.new("L", (canvas_w, canvas_h), 0)
    corner = (int(rng.integers(0, canvas_w - size)), int(rng.integers(0, canvas_h - size)))
    mask.paste(ink_mask, corner)

    style = rng.choice(["dark on light", "light on dark", "gray"], p=[0.7, 0.15, 0.15])
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


def build(count: int, out: Path, seed: int = 0) -> tuple[list[Path], np.ndarray, list[str]]:
    """Write `count` redrawn test digits into `out`; return their files, labels and styles."""
    made_here = (out / MARKER).is_file()
    if out.exists() and not made_here and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(
            f"--out {out}: exists and was not made by real_use; name a new or empty folder"
        )
    images, labels = load_images_and_labels(RAW_DIR, "t10k")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=count, replace=False)
    names, styles = [], []
    with atomic_path(out) as temp:  # replaces a folder real_use made before, as a whole
        temp.mkdir()
        (temp / MARKER).write_text("made by python -m commands.real_use; replaced on each run\n")
        for n, index in enumerate(chosen):
            image, style = redraw(images[index], rng)
            fmt = str(rng.choice(list(FORMATS)))
            names.append(f"{n:05d}-label{labels[index]}.{FORMATS[fmt]}")
            image.save(temp / names[-1], format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            styles.append(style)
    return [out / name for name in names], labels[chosen], styles


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.real_use", description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("data/real-use"))
    parser.add_argument("--model", default=str(MODEL))
    args = parser.parse_args()
    files, labels, styles = build(args.count, args.out)
    results = predict_files(args.model, files)
    predicted = np.array([-1 if r.digit is None else r.digit for r in results])
    correct = predicted == labels
    for style in sorted(set(styles)):
        chosen = np.array(styles) == style
        print(f"  {style}: {correct[chosen].mean():.2%} of {chosen.sum()}")
    failed = sum(r.error is not None for r in results)
    print(
        f"real-use accuracy: {correct.mean():.2%} ({correct.sum()} of {len(files)} images "
        f"in {args.out}; {failed} unreadable) with {args.model}"
    )


if __name__ == "__main__":
    run(main)
