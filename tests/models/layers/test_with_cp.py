"""Activation checkpointing (``model.transformer.with_cp``): the same loss and gradients as
without it, in float64, for each variant, with dropout active (the recomputation replays the RNG
state, so it draws the same masks); and less held activation memory."""

import pytest
import torch
from mmdet.registry import MODELS

from mmdet_deformdetr.analysis.activation_memory import ActivationMeter
from tests.helpers.models import (
    VARIANTS,
    as_double,
    init_weights_quietly,
    make_batch,
    tiny_model_cfg,
)


def _model(variant: str, with_cp, dropout: float = 0.1) -> torch.nn.Module:
    cfg = tiny_model_cfg(variant)
    cfg['transformer'].update(with_cp=with_cp, dropout=dropout, num_encoder_layers=2)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    init_weights_quietly(model)
    return model.double().train()


def _loss_and_grads(model: torch.nn.Module, data: dict, seed: int = 1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(value for key, value in losses.items() if 'loss' in key)
    total.backward()
    return total.detach(), {
        name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad
    }


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_gradients_equal_with_and_without_with_cp(variant):
    reference = _model(variant, False)
    checkpointed = _model(variant, True)
    checkpointed.load_state_dict(reference.state_dict())
    data = as_double(make_batch(reference))

    loss, grads = _loss_and_grads(reference, data)
    loss_cp, grads_cp = _loss_and_grads(checkpointed, data)
    assert torch.equal(loss, loss_cp)
    assert set(grads) == set(grads_cp) and all(g is not None for g in grads_cp.values())
    for name, grad in grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grads_cp[name] - grad).abs().max() <= 1e-6 * scale, name
    # dropout is active: another seed draws other masks and another loss
    assert not torch.equal(_loss_and_grads(reference, data, seed=2)[0], loss)


def test_with_cp_holds_less_and_only_in_training():
    plain, checkpointed = _model('two_stage', False, 0.0), _model('two_stage', True, 0.0)
    checkpointed.load_state_dict(plain.state_dict())
    data = make_batch(plain)
    data = dict(data, inputs=data['inputs'].double())
    held = {}
    for name, model in (('plain', plain), ('with_cp', checkpointed)):
        layers = list(model.transformer.encoder.layers) + list(model.transformer.decoder.layers)
        with ActivationMeter(model, checkpointed=layers if name == 'with_cp' else ()) as meter:
            model.loss(data['inputs'], data['data_samples'])
        held[name] = meter.held_bytes
    assert held['with_cp'] < 0.9 * held['plain'], held
    # evaluation: no checkpointing, the same predictions
    plain.eval(), checkpointed.eval()
    with torch.no_grad():
        expected = plain._forward(data['inputs'], data['data_samples'])
        actual = checkpointed._forward(data['inputs'], data['data_samples'])
    assert all(torch.equal(a, b) for a, b in zip(actual, expected))


def test_with_cp_values():
    with pytest.raises(ValueError, match="with_cp must be a bool, 'encoder' or 'decoder'"):
        _model('plain', 'backbone')
    model = _model('plain', 'encoder')
    assert model.transformer.encoder.with_cp and not model.transformer.decoder.with_cp
