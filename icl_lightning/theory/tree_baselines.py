"""Garg et al.'s tree learners as in-context baselines (the optional extra ``[trees]``:
scikit-learn's greedy ``DecisionTreeRegressor`` and xgboost's ``XGBRegressor``, default options
as theirs). Each fits one prompt's first k points at a time: slow, so off by default."""

import numpy as np
import torch


def tree_learners(max_depth: int | None = 4) -> dict:
    """``{name: factory}`` of fresh regressors; ImportError naming the extra without them."""
    try:
        import xgboost
        from sklearn.tree import DecisionTreeRegressor
    except ImportError as error:
        raise ImportError(
            "The tree baselines need scikit-learn and xgboost: pip install 'icl-lightning[trees]'"
        ) from error
    return {
        f"tree_depth{max_depth}": lambda: DecisionTreeRegressor(max_depth=max_depth),
        "xgboost": lambda: xgboost.XGBRegressor(),
    }


def fitted_predictions(factory, xs, ys, qs) -> torch.Tensor:
    """``(B, K+1)``: a regressor fitted on each prompt's first k points predicts ``q_k``."""
    x, y, q = (t.detach().double().cpu().numpy() for t in (xs, ys, qs))
    pred = np.zeros(ys.shape)
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            pred[b, k] = factory().fit(x[b, :k], y[b, :k]).predict(q[b, k : k + 1])[0]
    return torch.as_tensor(pred, dtype=xs.dtype, device=xs.device)
