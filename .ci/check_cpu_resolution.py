"""CI: a pip --dry-run report of `pip install -c constraints-cpu.txt torch` must hold torch's +cpu build and
no CUDA package (nvidia-*, triton): what a CPU machine installing with the README's command gets."""

import json
import sys

installed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
             for item in json.load(open(sys.argv[1]))["install"]}
torch = installed.get("torch", "")
if not torch.endswith("+cpu"):
    sys.exit(f"constraints-cpu.txt resolves torch {torch or '(none)'}, not a +cpu build")
cuda = sorted(name for name in installed if name.startswith("nvidia") or name == "triton")
if cuda:
    sys.exit(f"constraints-cpu.txt pulls CUDA packages: {cuda}")
print(f"constraints-cpu.txt resolves torch {torch} and no CUDA package")
