"""A compiled training step of a linear focal loss against the eager step (shared by the
linear_focal_loss test modules)."""

from __future__ import annotations

import torch


def check_compiled_linear_step(criterion, input_scale: float = 1.0) -> None:
    """``criterion(hidden, head.weight, target, head.bias)`` behind a small body, compiled with
    dynamic shapes, equals eager (loss and the three parameter gradients) at two batch sizes,
    the second without a recompile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    body = torch.nn.Linear(5, 8)
    head = torch.nn.Linear(8, 37)

    def forward(x, t):
        loss = criterion(torch.tanh(body(x)) * input_scale, head.weight, t, head.bias)
        return loss if loss.dim() == 0 else (loss * torch.arange(loss.numel())).sum()

    compiled = torch.compile(forward, fullgraph=True, dynamic=True)
    params = [body.weight, head.weight, head.bias]
    for i, n in enumerate((10, 13)):
        x = torch.randn(n, 5)
        t = torch.randint(0, 37, (n,))
        t[2] = -100
        stance = torch.compiler.set_stance("fail_on_recompile") if i else torch.enable_grad()
        with stance:
            for p in params:
                p.grad = None
            got = compiled(x, t)
            got.backward()
        got_grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        expected = forward(x, t)
        expected.backward()
        torch.testing.assert_close(got, expected)
        for a, e in zip(got_grads, [p.grad for p in params], strict=True):
            torch.testing.assert_close(a, e)
    torch._dynamo.reset()
