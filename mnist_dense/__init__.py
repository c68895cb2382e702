"""The library the pipeline's stages and commands share, in folders by role (README: Layout).

`config` (params, paths, shapes), `errors`, `files`, `figures`; `data/` (reading and
normalizing digits), `model/` (the network and its training), `tracking/` (MLflow runs, the
registry, provenance), `serving/` (image to digit, the served model), `runtime/` (the process:
kernel path, quiet start-up, running a stage as a command). Importing it changes nothing in the
process: entry points call `mnist_dense.runtime.process.prepare()` first.
"""
