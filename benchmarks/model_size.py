"""Parameter counts and forward FLOPs per image of each network, for each preset. Prints a table."""
import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from affectedit.config import PRESETS, get_config
from affectedit.networks import build_models


def count(preset: str):
    cfg = get_config(preset).model
    m = build_models(cfg)
    s = cfg.image_size
    x = torch.zeros(1, 3, s, s)
    y = torch.zeros(1, 2)
    z = torch.zeros(1, cfg.z_dim)
    for net in m.values():
        net.eval()
    calls = {"encoder": lambda: m["encoder"](x), "generator": lambda: m["generator"](z, y),
             "d_z": lambda: m["d_z"](z), "d_img": lambda: m["d_img"](x, y)}
    rows = []
    for name, fn in calls.items():
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn()
        params = sum(p.numel() for p in m[name].parameters())
        rows.append((preset, name, params, fc.get_total_flops()))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = ap.parse_args()
    print(f"{'preset':8} {'network':10} {'params':>12} {'GFLOP/image':>12}")
    for p in args.presets:
        for preset, name, params, flops in count(p):
            print(f"{preset:8} {name:10} {params:12,d} {flops / 1e9:12.4f}")
