"""Add each piece's memory figures to a profile JSON measured before profiles recorded them.

`graft_fx.serving.pieces` now records ``weight_bytes`` and ``workspace_bytes`` for every piece it
builds, so newly measured profiles carry them. A file measured earlier (the shipped H200 profile)
gets them here, from the same graph analysis of the same models, matched by the pieces' cut
names; latencies are left as they are. Runs on a CPU in a minute or two.

    python benchmarks/annotate_memory.py graft_fx/serving/data/profiles/h200.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from graft_fx.serving import zoo
from graft_fx.serving.pieces import select


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path)
    path = p.parse_args().profile
    doc = json.loads(path.read_text())
    for name, entry in doc["models"].items():
        model, example = zoo.build(name)
        selection = select(model, example, at=[piece["from"] for piece in entry["pieces"]])
        for piece, computed in zip(entry["pieces"], selection.pieces):
            assert piece["from"] == computed.start, (piece["from"], computed.start)
            piece["weight_bytes"], piece["workspace_bytes"] = computed.weight_bytes, computed.workspace_bytes
        weights = sum(p.weight_bytes for p in selection.pieces)
        print(f"{name}: {len(selection.pieces)} pieces, {weights / 2**20:.1f} MiB of weights")
    path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
