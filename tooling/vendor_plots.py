"""Put vega, vega-lite and vega-embed into DVC's plots template, from the npm registry.

    make vendor-plots          (python -m tooling.vendor_plots)

DVC's own page (`dvc plots show` / `dvc plots diff`) loads the three libraries from a public
CDN and is blank without a network. This fetches each pinned package with `npm pack`, which
checks the tarball against the integrity (sha512) the registry publishes, and inlines its
minified browser build into plots/template.html: the template .dvc/config names
(`plots.html_template`), so every page DVC writes carries the libraries itself. The versions,
the registry's integrity strings and the sha256 of each inlined file go to plots/vendor.json,
against which tests/test_plots.py checks the template. Both files are committed: an offline
machine needs them at hand, not a registry.
"""

import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mnist_dense.errors import PipelineError
from mnist_dense.files import write_text
from mnist_dense.runtime.cli import run

TEMPLATE = Path("plots/template.html")
RECORD = Path("plots/vendor.json")
PACKAGES = {  # DVC renders vega-lite 5 specs; vega-embed 6 is the last for vega 5
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {versions}, inlined by `make vendor-plots` (plots/vendor.json): no network needed -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(name: str, version: str, member: str, folder: Path) -> tuple[str, bytes]:
    """npm's integrity string for the package's tarball, and the file `member` inside it."""
    packed = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if packed.returncode != 0:
        raise PipelineError(f"npm pack {name}@{version} failed: {packed.stderr.strip()[-300:]}")
    (info,) = json.loads(packed.stdout)
    with tarfile.open(folder / info["filename"]) as archive:
        data = archive.extractfile(f"package/{member}").read()
    return info["integrity"], data


def inline(data: bytes) -> str:
    """A script's text, safe inside <script>...</script>."""
    return data.decode("utf-8").replace("</script", "<\\/script")


def main() -> None:
    record, scripts = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, (version, member) in PACKAGES.items():
            integrity, data = fetch(name, version, member, Path(folder))
            text = inline(data)
            record[name] = {
                "version": version,
                "file": member,
                "npm_integrity": integrity,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
            scripts.append(f'    <script data-package="{name}@{version}">{text}</script>')
            print(f"{name}@{version}: {len(data) / 1024:.0f} KiB, {integrity[:20]}...")
    versions = ", ".join(f"{name} {entry['version']}" for name, entry in record.items())
    write_text(TEMPLATE, PAGE.format(versions=versions, scripts="\n".join(scripts)))
    write_text(RECORD, json.dumps(record, indent=2) + "\n")
    print(f"wrote {TEMPLATE} and {RECORD}")


if __name__ == "__main__":
    run(main)
