import collections
import glob
import gzip
import json
import re
import sys

name = sys.argv[1]
hlo = open(f"/work/runs/flags/hlo_{name}.txt").read()
info = {}
for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+)", line)
    if m:
        op = re.search(r'op_name="([^"]*)"', line)
        info[m.group(1)] = (m.group(2), op.group(1) if op else "", line)
f = glob.glob(f"/tmp/prof_{name}/**/*.trace.json.gz", recursive=True)[0]
ev = json.load(gzip.open(f))["traceEvents"]
cat = collections.Counter()
for e in ev:
    if e.get("ph") != "X" or e["name"] not in info:
        continue
    shape, op, line = info[e["name"]]
    if "conv_general_dilated" in op and "transpose(" in op:
        c = "conv backward (data)"
    elif "conv_general_dilated" in op:
        c = "conv forward"
    elif re.match(r"f32\[\d+,3,3,\d+\]", shape) and "ynn" in e["name"]:
        c = "conv backward (filter)"
    elif "dot_general" in op:
        c = "dot " + ("bwd" if "transpose(" in op else "fwd")
    elif "transpose_copy" in e["name"] or e["name"].startswith("copy"):
        c = "transpose/copy"
    elif "_uniform" in op or "threefry" in op or "random" in op:
        c = "rng"
    elif "reduce" in e["name"] or "reduce" in op:
        c = "reduce: " + op.split("/")[-1]
    else:
        c = "elementwise: " + op.split("/")[-1][:30]
    cat[c] += e["dur"]
total = sum(cat.values())
for c, us in cat.most_common(30):
    print(f"{us / 5 / 1000:8.2f} ms/step {us / total:6.1%}  {c}")
print("total ms/step", total / 5 / 1000)
