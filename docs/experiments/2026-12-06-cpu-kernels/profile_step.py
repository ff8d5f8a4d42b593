import collections
import glob
import gzip
import json
import sys
import time

sys.path.insert(0, "/work/main/benchmarks")
import jax
import unet_throughput as ut

config = ut.load_preset("demo", None)
from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.step import training_program
from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder

schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
mesh = parallel.make_mesh(config.mesh)
batch = ut.make_batch(config, 32)
rng = jax.random.key(0)
program = training_program(
    unet_builder(config), make_diffusion_loss(schedule, config), config.train, mesh
)
state = state_lib.init_train_state(unet_builder(config), program.optimizer, mesh, rng)
args = [state, parallel.global_batch(batch, mesh), rng, {}]
compiled = program.step.lower(*args).compile()
for _ in range(3):
    out = jax.block_until_ready(compiled(*args))
    args[0] = out[0]
t = time.perf_counter()
for _ in range(5):
    out = jax.block_until_ready(compiled(*args))
    args[0] = out[0]
print("step ms", (time.perf_counter() - t) / 5 * 1e3)
d = "/tmp/prof_" + sys.argv[1]
jax.profiler.start_trace(d, create_perfetto_trace=True)
for _ in range(5):
    out = jax.block_until_ready(compiled(*args))
    args[0] = out[0]
jax.profiler.stop_trace()
f = glob.glob(d + "/**/*.trace.json.gz", recursive=True)[0]
tr = json.load(gzip.open(f))
ev = tr["traceEvents"] if isinstance(tr, dict) else tr
tot = collections.Counter()
cnt = collections.Counter()
for e in ev:
    if e.get("ph") == "X":
        tot[e["name"]] += e.get("dur", 0)
        cnt[e["name"]] += 1
print("n events", len(ev))
for name, us in tot.most_common(45):
    print(f"{us / 5 / 1000:8.2f} ms/step  x{cnt[name] // 5:4d}  {name[:110]}")
with open(f"/work/runs/flags/hlo_{sys.argv[1]}.txt", "w") as fh:
    fh.write(compiled.as_text())
