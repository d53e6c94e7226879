"""Paper A's official GD++ training (``pre_train_gd_hps``) at L layers; run with the JAX venv.

Settings of the official notebook ``constructed_token_setup.ipynb`` for L separate layers
(``deq = gd_deq = False``): the shared start from ``scan_lrs(lin_diag=True)`` (``gamma = eta /
N^2``), Adam with lr 1e-3 (5e-4 when L > 3), clipping by global norm 1e-3 (10 when L > 2),
activation clipping 10 when L > 3, batches of 512 fresh prompts, 30,000 steps. Prints one line
``RESULT {...}`` with the learned per-layer sizes ``eta_l = -N V_l[d, d] P_l[d, d]`` and
``gamma_l = -V_l[0, 0] P_l[0, 0]``, and the official model's loss on its own 10,000 evaluation
prompts (eval key 5), which it also saves (``--save-eval FILE.npz``) so the PyTorch side can check
that it reads the sizes right. The scan and the training loop are the official ones with their
step compiled once (:func:`train`); ``--check-steps K`` also runs ``pre_train_gd_hps`` itself for
K steps and prints the largest difference between the two sets of weights.

    JAX_VENV/bin/python scripts/gd_plus_plus_jax_worker.py --jax-ref JAXREF --layers 4
"""

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-ref", required=True, help="folder holding the official src/")
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--steps", type=int, default=30_000, help="training_steps_gd")
    parser.add_argument(
        "--check-steps",
        type=int,
        default=0,
        help="also run pre_train_gd_hps itself for this many steps and print the largest gap",
    )
    parser.add_argument("--save-eval", default=None, help="write the 10k evaluation prompts here")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    jnp.DeviceArray = jax.Array  # removed from newer JAX; only used in type hints there
    sys.path.insert(0, args.jax_ref)
    from src.config import config

    L = args.layers
    config.seed = 0
    config.local_usage = True
    config.deq = config.gd_deq = False
    config.att_only_trans = True
    config.pre_train_gd = config.train_gd_whitening = config.train_gd_lr = True
    config.use_bias = config.include_query = False
    config.training_steps_gd = args.steps
    config.use_softmax = config.first_layer_sm = config.use_non_lin_mix = False
    config.layer_norm = config.out_proj = config.in_proj = False
    config.dataset_size, config.input_size, config.key_size, config.emb_size = 10, 10, 11, 11
    config.num_layers, config.num_heads = L, 1
    config.grad_clip_value = config.grad_clip_value_gd = 10 if L > 2 else 0.001
    config.lr = config.gd_lr = 0.0005 if L > 3 else 0.001
    config.wd = 0.0
    config.init_scale = 0.002 / L
    config.bs, config.bs_gd_train = 2048, 512
    config.dampening = 1.0
    config.clip = 10 if L > 3 else 0
    config.dropout_rate = 0.0
    config.y_update = False
    config.input_range = 1
    config.analyse = True
    config.cycle_data = 0

    import optax
    import src.train as T
    from src.data import create_weights

    def prompts(rng, num):
        return T.data_creator(
            jax.random.split(rng, num=num),
            config.input_size,
            config.dataset_size,
            config.size_distract,
            config.input_range,
            config.weight_scale,
        )

    def weights(lr):
        return create_weights(
            config.input_size,
            1,
            config.dataset_size,
            lr,
            jnp.zeros([1, 1, config.input_size]),
            lin_diag=True,
            gd_deq=False,
            num_layers=L,
        )

    eval_rng = jax.random.PRNGKey(5)
    eval_data = prompts(eval_rng, 10000)  # scan_lrs' and the notebook's 10k prompts (key 5)
    test_loss = jax.jit(lambda params: T.predict_test.apply(params, eval_rng, eval_data, True)[0])
    start = time.perf_counter()
    # scan_lrs(eval_rng, lin_diag=True, bs=10000), its loop over the same grid, jitted
    grid = np.arange(0.001, 25, 0.1)
    scan = np.array([float(test_loss(weights(lr))) for lr in grid])
    lr_min, scan_loss = grid[scan.argmin()], scan.min()
    scan_seconds = time.perf_counter() - start
    params = train(T, config, jax, optax, eval_rng, weights(lr_min), prompts, args.steps)
    train_seconds = time.perf_counter() - start - scan_seconds
    if args.check_steps:
        config.training_steps_gd = args.check_steps
        official, _ = T.pre_train_gd_hps(eval_rng, weights(lr_min))
        ours = train(T, config, jax, optax, eval_rng, weights(lr_min), prompts, args.check_steps)
        gap = max(float(abs(official[k]["w"] - ours[k]["w"]).max()) for k in ours)
        print(f"jitted loop vs pre_train_gd_hps after {args.check_steps} steps: {gap:.2e}")
    eval_loss = test_loss(params)
    etas, gammas = [], []
    for layer in range(L):
        name = f"Transformer_gd/~trans_block/layer_{layer}/"
        V, P = np.asarray(params[name + "value"]["w"]), np.asarray(params[name + "linear"]["w"])
        etas.append(float(-config.dataset_size * V[-1, -1] * P[-1, -1]))
        gammas.append(float(-V[0, 0] * P[0, 0]))
    if args.save_eval:
        tokens, targets, _ = (np.asarray(a) for a in eval_data)
        np.savez(args.save_eval, tokens=tokens, targets=targets)
    result = dict(
        layers=L,
        steps=args.steps,
        shared_start_eta=float(lr_min),
        scan_loss=float(scan_loss),
        etas=etas,
        gammas=gammas,
        official_eval_loss=float(eval_loss),
        scan_seconds=scan_seconds,
        train_seconds=train_seconds,
    )
    print("RESULT " + json.dumps(result), flush=True)


def train(T, config, jax, optax, eval_rng, params, prompts, steps):
    """``pre_train_gd_hps(eval_rng, params)`` with its step jitted: the same optimiser, key
    sequence, batches, loss and gradient manipulation (only the diagonal blocks of each layer's
    value and projection train, their input part as one scalar), one compiled step."""
    optimiser = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_value_gd),
        optax.adam(config.gd_lr, b1=0.9, b2=0.999),
    )
    opt_state = optimiser.init(params)

    @jax.jit
    def step(params, opt_state, rng):
        data_rng, rng = jax.random.split(rng, 2)
        data = prompts(data_rng, config.bs_gd_train)
        _, gradients = jax.value_and_grad(T.loss_fn.apply)(params, rng, data, True)
        gradients = T.gradient_manipulation(gradients, config.key_size)
        updates, opt_state = optimiser.update(gradients, opt_state)
        return optax.apply_updates(params, updates), opt_state, rng

    _, rng = jax.random.split(eval_rng, 2)
    for _ in range(steps):
        params, opt_state, rng = step(params, opt_state, rng)
    return params


if __name__ == "__main__":
    main()
