"""GPU checks (bf16-mixed + torch.compile through the shared LightningModule); skipped without CUDA."""
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
