"""GPU checks (bf16-mixed + torch.compile through the shared LightningModule, fp8 training on sm_89+); skipped
without CUDA."""
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_compiled_training_steps_on_gpu():
    import lightning as L

    from nanochat import scaling
    from nanochat.lit.callbacks import ThroughputMFU
    from nanochat.lit.module import NanochatLM

    cfg = scaling.model_config(2, vocab_size=512, seq_len=128, head_dim=64)
    plan = scaling.plan(cfg, device_batch_size=4, total_batch_tokens=512, num_iterations=6)
    module = NanochatLM(plan, torch.ones(512, dtype=torch.int32), compile=True)

    class Data:
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            while True:
                row = torch.randint(0, 512, (4, 129), generator=g)
                yield row[:, :-1], row[:, 1:]

    mfu = ThroughputMFU(flops_per_token=1e6, tokens_per_step=4 * 128, peak_flops=1e14)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[mfu],
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=Data())
    assert trainer.global_step == 6
    assert not any("_orig_mod" in k for k in module.model.state_dict())  # in-place compile keeps keys clean
    assert len(mfu.history) == 6


def _fp8_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9)


needs_fp8 = pytest.mark.skipif(not _fp8_capable(), reason="fp8 matmuls need compute capability 8.9+")


@needs_fp8
def test_fp8_matmul_on_gpu_matches_dequantised_reference():
    from nanochat.fp8 import E4M3, E5M2, Fp8Matmul, dequantize, quantize

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(200, 256, device="cuda", generator=g).bfloat16().requires_grad_()  # 200 rows: padded to 208
    w = torch.randn(384, 256, device="cuda", generator=g, requires_grad=True)
    grad = torch.randn(200, 384, device="cuda", generator=g).bfloat16()
    y = Fp8Matmul.apply(x, w)
    y.backward(grad)
    xd, wd, gd = (dequantize(*quantize(t.detach(), dt)) for t, dt in ((x, E4M3), (w, E4M3), (grad, E5M2)))
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), xd @ wd.t(), rtol=2e-2, atol=1e-1)  # output rounded to bf16
    torch.testing.assert_close(x.grad.float(), gd @ wd, rtol=2e-2, atol=1e-1)
    torch.testing.assert_close(w.grad, gd.t() @ xd, rtol=1e-4, atol=1e-2)


@needs_fp8
def test_fp8_compiled_training_steps_on_gpu_keep_plain_checkpoint_keys():
    import lightning as L

    from nanochat import scaling
    from nanochat.fp8 import Fp8Linear
    from nanochat.gpt import GPT
    from nanochat.lit.module import NanochatLM

    cfg = scaling.model_config(2, vocab_size=512, seq_len=128, head_dim=64)
    plan = scaling.plan(cfg, device_batch_size=4, total_batch_tokens=512, num_iterations=6)
    module = NanochatLM(plan, torch.ones(512, dtype=torch.int32), compile=True, fp8=True)

    def rows(seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            row = torch.randint(0, 512, (4, 129), generator=g)
            yield row[:, :-1], row[:, 1:]

    class Data:
        def __init__(self, seed, n=None):
            self.seed, self.n = seed, n

        def __iter__(self):
            it = rows(self.seed)
            return it if self.n is None else (next(it) for _ in range(self.n))

    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=2,
                        val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=Data(0), val_dataloaders=Data(1, 2))
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["val/bpb"])
    assert sum(isinstance(m, Fp8Linear) for m in module.model.modules()) == 13
    with torch.device("meta"):
        plain = GPT(cfg)
    assert list(module.model.state_dict()) == list(plain.state_dict())  # checkpoints/export see a plain model
