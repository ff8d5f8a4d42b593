import time

import torch

torch.set_num_threads(2)
shapes = [(32, 16, 16, 64, 64), (32, 8, 8, 128, 128), (32, 4, 4, 128, 128), (32, 16, 16, 128, 64)]
for B, H, W, Ci, Co in shapes:
    x = torch.randn(B, Ci, H, W, requires_grad=True)
    conv = torch.nn.Conv2d(Ci, Co, 3, padding=1, bias=False)

    def fwd():
        with torch.no_grad():
            return conv(x)

    def grad():
        out = conv(x)
        (out**2).sum().backward()

    for f in (fwd, grad):
        f()
    r = []
    for f in (fwd, grad):
        best = 1e9
        for rep in range(3):
            t = time.perf_counter()
            for _ in range(20):
                f()
            best = min(best, (time.perf_counter() - t) / 20)
        r.append(best * 1e3)
    print((B, H, W, Ci, Co), f"torch fwd {r[0]:.3f}ms grad {r[1]:.3f}ms", flush=True)
