"""Training on a GPU: J&F before and after fine-tuning on synthetic clips, speed and peak memory of our
training step against Meta's SAM2Train on the same batches, and the memory of large at 1024.

    PYTHONPATH=src:tests:/tmp/site python benchmarks/train.py --photos ../shared/data/images --out results/

Meta's side needs the oracle (sam2, hydra, iopath) and ../shared/oracles/sam2-training. No real
checkpoint is used: the models start from random weights, so J&F "before" is that of an untrained
model. Writes train_benchmark.json and prints one line per measurement.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the oracle helpers

import sam2rt  # noqa: E402
from sam2rt.evaluate import evaluate_folders, run_vos_inference
from sam2rt.train import (
    LossWeights,
    OptimSettings,
    PromptSettings,
    TrainConfig,
    VOSDataset,
    clip_forward,
    clip_loss,
    collate,
    enable_activation_checkpointing,
    freeze,
    make_optimizer,
    make_synthetic_vos,
    plan_clip,
    train,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE.type == "cuda" else nullcontext()


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")


def _empty_cache() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def jf(model, root: Path, out: Path) -> float:
    model.eval()
    run_vos_inference(model, root / "JPEGImages", root / "Annotations", out, progress=False)
    return evaluate_folders(root / "Annotations", out).scores.jf


def our_step(model, optimizer, batch, seed: int, settings: PromptSettings) -> float:
    plan = plan_clip(settings, batch.num_frames, np.random.default_rng(seed))
    with _autocast():
        outputs = clip_forward(model, batch, plan, settings.clicks_per_frame, settings.corrections_as_cond)
        loss = clip_loss(outputs, batch.masks, LossWeights(), float(batch.num_objects)).total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    return float(loss.detach())


def meta_step(model, criterion, optimizer, batch, data_utils, num_videos: int) -> float:
    frames = batch.num_frames
    size = batch.images.shape[-1]
    img_batch = batch.images.reshape(num_videos, frames, 3, size, size).transpose(0, 1)  # (T, V, 3, S, S)
    index = torch.stack([batch.image_index % frames, batch.image_index // frames], dim=-1)
    datapoint = data_utils.BatchedVideoDatapoint(img_batch, index, batch.masks)
    with _autocast():
        outputs = model(datapoint)
        loss = criterion(outputs, batch.masks)["core_loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    return float(loss.detach())


def timed(step, batches: list, warmup: int = 1) -> tuple[float, float]:
    """(iterations per second after `warmup` steps, peak GiB allocated)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync()
            start = time.perf_counter()
        step(batch, i)
    _sync()
    return (len(batches) - warmup) / (time.perf_counter() - start), _peak_gib()


def compare(
    variant: str, size: int, batches: list, num_videos: int, freeze_encoder: bool, checkpointing: bool, meta_too: bool
) -> dict:
    settings = PromptSettings()
    result = {
        "variant": variant,
        "image_size": size,
        "frozen_encoder": freeze_encoder,
        "activation_checkpointing": checkpointing,
    }
    torch.manual_seed(0)
    ours = sam2rt.build_model(variant, image_size=size).to(DEVICE).train()
    if freeze_encoder:
        freeze(ours, ["image_encoder"])
    if checkpointing:
        enable_activation_checkpointing(ours)
    optimizer = make_optimizer(ours, OptimSettings())
    result["ours_it_s"], result["ours_peak_gib"] = timed(
        lambda b, i: our_step(ours, optimizer, b, i, settings), batches
    )
    del ours, optimizer
    _empty_cache()
    if meta_too:
        from oracle_training import import_training, official_loss, official_train_model

        _, loss_fns, data_utils = import_training()
        meta = official_train_model(variant, size, settings, DEVICE.type, freeze_encoder)
        criterion = official_loss(loss_fns)
        meta_optimizer = torch.optim.AdamW([p for p in meta.parameters() if p.requires_grad], lr=5e-6)
        result["meta_it_s"], result["meta_peak_gib"] = timed(
            lambda b, i: meta_step(meta, criterion, meta_optimizer, b, data_utils, num_videos), batches
        )
        del meta, meta_optimizer
        _empty_cache()
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--large-size", type=int, default=1024, help="0: skip large")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/train_benchmark")
    shutil.rmtree(work, ignore_errors=True)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(args.photos.glob("*.jpg"))]
    size = args.size
    train_root = make_synthetic_vos(work / "train", photos, args.videos, num_frames=8, size=size, seed=0)
    held_root = make_synthetic_vos(work / "held", photos, 8, num_frames=8, size=size, seed=1)
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    report: dict = {"device": device_name, "torch": torch.__version__}

    # 1. Fine-tuning learns: tiny from random weights, J&F on held-out clips before and after.
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=size).to(DEVICE)
    report["tiny_jf_before"] = jf(model, held_root, work / "pred_before")
    dataset = VOSDataset(train_root, num_frames=8, max_objects=3)
    precision = "bf16" if DEVICE.type == "cuda" else "fp32"
    probe = TrainConfig(
        out_dir=work / "probe",
        steps=8,
        precision=precision,
        progress=False,
        log_every=1,
        optim=OptimSettings(lr=1e-4, vision_lr=1e-4),
    )
    train(model, dataset, probe)
    with (work / "probe" / "log.csv").open() as file:
        seconds = [float(row["seconds"]) for row in csv.DictReader(file)]
    per_step = (seconds[-1] - seconds[3]) / (len(seconds) - 4)  # after the first steps' warm-up
    shutil.rmtree(work / "probe")
    steps = max(int(args.train_seconds / per_step), 10)
    config = TrainConfig(
        out_dir=work / "run",
        steps=steps,
        precision=precision,
        progress=False,
        log_every=10,
        optim=OptimSettings(lr=1e-4, vision_lr=1e-4, grad_clip=1.0),
    )
    start = time.perf_counter()
    result = train(model, dataset, config)
    report["tiny_train"] = {"steps": steps, "seconds": time.perf_counter() - start, "final_loss": result.final_loss}
    report["tiny_jf_after"] = jf(model, held_root, work / "pred_after")
    shutil.copy(result.log, args.out / "tiny_log.csv")
    print(json.dumps({k: report[k] for k in ("tiny_jf_before", "tiny_train", "tiny_jf_after")}), flush=True)
    del model
    _empty_cache()

    # 2. Speed and memory against Meta's SAM2Train on the same batches (8 frames, up to 3 objects, batch 1).
    rng = random.Random(0)
    batches = [collate([dataset.sample(rng, size)]).to(DEVICE) for _ in range(6)]
    report["tiny_vs_meta"] = compare("sam2.1_hiera_tiny", size, batches, 1, False, False, True)
    del batches

    # 3. Large at 1024, 8-frame clips, 3 objects, batch 1: does it fit in 24 GB?
    large = args.large_size
    if large:
        big_root = make_synthetic_vos(work / "big", photos, 4, num_frames=8, size=large, max_objects=3, seed=2)
        big = VOSDataset(big_root, 8, 3)
        rng = random.Random(1)
        batches = [collate([big.sample(rng, large)]).to(DEVICE) for _ in range(4)]
        report["large_full"] = compare("sam2.1_hiera_large", large, batches, 1, False, False, True)
        report["large_checkpointed"] = compare("sam2.1_hiera_large", large, batches, 1, False, True, False)
        report["large_frozen_encoder"] = compare("sam2.1_hiera_large", large, batches, 1, True, False, True)
    (args.out / "train_benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
