"""Our GPT2 against Garg et al.'s own ``TransformerModel`` (Hugging Face's ``GPT2Model``
inside) given the same weights: equal predictions at every x of the prompt.

Garg et al.'s code needs ``transformers`` (and, for its ``models.py`` imports, scikit-learn,
xgboost and tqdm), which this project does not depend on, so it runs in its own environment:
this script builds our model with random weights (LayerNorm and biases perturbed too), writes
them under Garg et al.'s parameter names (``nn.Linear`` weights transposed into HF's
``Conv1D``), and runs ``--garg-python`` on Garg et al.'s ``src/`` (``--garg-ref``) to load
them and predict on the same prompts. Prints the largest difference per size and dtype.

    python -m venv .venv-garg && .venv-garg/bin/pip install torch transformers scikit-learn \\
        xgboost tqdm
    git clone <Garg et al.'s in-context-learning repository> GARGREF
    python scripts/check_gpt2_against_hf.py --garg-python .venv-garg/bin/python \\
        --garg-ref GARGREF/src
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from icl_lightning.models import GPT2

SIZES = {"tiny": (3, 64, 2), "small": (6, 128, 4), "standard": (12, 256, 8)}

#: run by --garg-python: Garg et al.'s TransformerModel on the saved weights and prompts
GARG_SIDE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from models import TransformerModel
data = torch.load(sys.argv[2])
out = {}
for name, case in data.items():
    model = TransformerModel(**case["options"]).to(case["dtype"]).eval()
    missing, unexpected = model.load_state_dict(case["state"], strict=False)
    assert not unexpected and all(k.endswith("wte.weight") for k in missing), (missing, unexpected)
    with torch.no_grad():
        out[name] = model(case["xs"], case["ys"])
torch.save(out, sys.argv[3])
"""


def garg_state(model: GPT2) -> dict[str, torch.Tensor]:
    """Our weights under the names of Garg et al.'s ``TransformerModel`` (HF ``Conv1D`` weights
    are the transpose of ``nn.Linear``'s)."""
    state = {
        "_read_in.weight": model.read_in.weight,
        "_read_in.bias": model.read_in.bias,
        "_backbone.wpe.weight": model.wpe.weight,
        "_backbone.ln_f.weight": model.ln_f.weight,
        "_backbone.ln_f.bias": model.ln_f.bias,
        "_read_out.weight": model.read_out.weight,
        "_read_out.bias": model.read_out.bias,
    }
    for i, block in enumerate(model.blocks):
        ours = {
            "ln_1": block.ln_1,
            "attn.c_attn": block.c_attn,
            "attn.c_proj": block.attn_c_proj,
            "ln_2": block.ln_2,
            "mlp.c_fc": block.c_fc,
            "mlp.c_proj": block.mlp_c_proj,
        }
        for name, layer in ours.items():
            linear = isinstance(layer, torch.nn.Linear)
            state[f"_backbone.h.{i}.{name}.weight"] = layer.weight.T if linear else layer.weight
            state[f"_backbone.h.{i}.{name}.bias"] = layer.bias
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--garg-python", required=True, help="python of the env with transformers")
    p.add_argument("--garg-ref", required=True, help="Garg et al.'s src/ folder (models.py)")
    p.add_argument("--input-dim", type=int, default=20)
    p.add_argument("--num-context", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    if not (Path(args.garg_ref) / "models.py").is_file():
        p.error(f"--garg-ref {args.garg_ref}: no models.py there (give Garg et al.'s src/)")
    torch.manual_seed(0)
    d, N, B = args.input_dim, args.num_context, args.batch
    cases, ours = {}, {}
    for size, (layers, width, heads) in SIZES.items():
        model = GPT2(d, num_positions=101, embed_dim=width, num_layers=layers, num_heads=heads)
        for q in model.parameters():
            q.data.add_(0.05 * torch.randn_like(q))  # LayerNorm weights off 1, biases off 0
        for dtype in (torch.float32, torch.float64):
            m = model.to(dtype).eval()
            cx, cy, qx, qy = (
                torch.randn(*s, dtype=dtype) for s in [(B, N, d), (B, N), (B, d), (B,)]
            )
            with torch.no_grad():
                ours[f"{size}/{dtype}"] = m.prefix_predictions(cx, cy, qx)
            cases[f"{size}/{dtype}"] = {
                "options": {
                    "n_dims": d,
                    "n_positions": 101,
                    "n_embd": width,
                    "n_layer": layers,
                    "n_head": heads,
                },
                "dtype": dtype,
                "state": garg_state(m),
                "xs": torch.cat([cx, qx[:, None]], 1),
                "ys": torch.cat([cy, qy[:, None]], 1),
            }
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save(cases, inputs)
        cmd = [args.garg_python, "-c", GARG_SIDE, args.garg_ref, str(inputs), str(outputs)]
        subprocess.run(cmd, check=True)
        theirs = torch.load(outputs)
    worst = {torch.float32: 0.0, torch.float64: 0.0}
    for name, prediction in ours.items():
        diff = float((prediction - theirs[name]).abs().max())
        scale = float(theirs[name].abs().max())
        print(f"{name:24s} max |ours - Garg/HF| = {diff:.2e}  (max |prediction| {scale:.2f})")
        worst[prediction.dtype] = max(worst[prediction.dtype], diff)
    ok = worst[torch.float64] < 1e-10 and worst[torch.float32] < 1e-4
    print("EQUAL" if ok else "DIFFERENT", {str(k): v for k, v in worst.items()})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
