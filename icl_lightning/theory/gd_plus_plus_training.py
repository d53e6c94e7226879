"""GD++ with one ``(eta_l, gamma_l)`` per step, trained by gradient descent on the loss.

Paper A's official code learns a step size and an input-transformation strength for each of
the L steps of GD++ by minimising the query loss, rather than sharing one pair found by grid
search. Here the loss is the exact mean query loss of L steps on float64 tuning prompts in the
spectral form (:func:`~icl_lightning.theory.gd.spectral_predict`, O(B d) per evaluation); Adam
starts from the best shared pair (:func:`~icl_lightning.theory.gd.optimal_eta_gamma`), so the
result is never worse than the shared baseline on the tuning prompts.
"""

import torch

from icl_lightning.theory.gd import optimal_eta_gamma, spectral_form, spectral_predict
from icl_lightning.theory.loss import prediction_loss


def per_layer_eta_gamma(
    context_x,
    context_y,
    query_x,
    query_y,
    num_steps: int,
    iterations: int = 300,
    lr: float = 0.02,
) -> tuple[list[float], list[float]]:
    """``([eta_1..eta_L], [gamma_1..gamma_L])`` minimising the mean query loss of L GD++ steps.

    Parameterised as ``eta_l = eta* exp(a_l)`` and ``gamma_l = gamma* + b_l / lam`` (``lam`` the
    mean largest eigenvalue of ``X^T X``, so both parameters are O(1)), from ``a = b = 0`` at the
    shared optimum ``(eta*, gamma*)``; ``iterations`` Adam steps; the best iterate is kept.
    """
    eta0, gamma0 = optimal_eta_gamma(context_x, context_y, query_x, query_y, num_steps)
    if num_steps == 1:
        return [eta0], [gamma0]
    with torch.inference_mode(False), torch.enable_grad():  # probes measure under no_grad
        return _train(
            context_x, context_y, query_x, query_y, num_steps, eta0, gamma0, iterations, lr
        )


def _train(context_x, context_y, query_x, query_y, num_steps, eta0, gamma0, iterations, lr):
    """Adam on ``(a, b)`` of :func:`per_layer_eta_gamma` (inputs cloned out of inference mode)."""
    N = context_x.shape[-2]
    inputs = (t.double().clone() for t in (context_x, context_y, query_x))
    lam, q, s = spectral_form(*inputs)
    target, scale = query_y.double().clone(), float(lam[:, -1].mean())
    a = torch.zeros(1, num_steps, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, num_steps, dtype=torch.float64, requires_grad=True)

    def sizes() -> tuple[torch.Tensor, torch.Tensor]:
        return eta0 * a.exp(), gamma0 + b / scale

    def loss() -> torch.Tensor:
        eta, gamma = sizes()
        return prediction_loss(spectral_predict(lam, q, s, eta, gamma, num_steps, N), target).mean()

    def snapshot() -> tuple[float, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return float(loss()), *sizes()

    optimizer = torch.optim.Adam([a, b], lr=lr)
    best = snapshot()
    for _ in range(iterations):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        best = min(best, snapshot(), key=lambda entry: entry[0])
    return best[1][0].tolist(), best[2][0].tolist()
