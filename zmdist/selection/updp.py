"""UP-DP on cached teacher embeddings: learnable prompt vectors condition the joint feature, an instance
head and a cluster head are trained with Contrastive-Clustering losses, one sample per cluster is picked.

Choices, and why:

- Joint feature. UP-DP conditions BLIP-2's joint image-text feature on learnable text context. Here the
  prompt is ``n_ctx`` learnable vectors living in the teacher's joint embedding space (init N(0, 0.02)),
  and the joint feature of an image embedding ``x`` is ``[x, s * cos(x, c_1), ..., s * cos(x, c_n)]``:
  its CLIP-style similarities to the learned prompts, beside the embedding itself. This is the
  "learnable prompt vector in embedding space" option, not context tokens run through the frozen text
  tower: selection works from the embedding files alone (no teacher, no images), and a prompt of the
  teacher's embedding width is reusable on any dataset embedded by the same teacher (or the same width).
- Views. Feature-level augmentation of the cached, L2-normalised embeddings: Gaussian noise of norm
  about ``noise`` plus dropping a ``feature_drop`` share of coordinates, re-normalised. Image-level views
  would need the teacher's image tower for every step (the cost that dominates: ``embed`` once is the
  whole point of caching); feature-level views cost nothing and train on millions of cached rows.
- Selection: ``zmdist.methods.selection.one_per_cluster`` on the cluster head's probabilities
  (K = budget clusters): each cluster's most confident member (the paper leaves the rule unverified).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zmdist.atomic import atomic_safetensors
from zmdist.config import option
from zmdist.methods.updp import cluster_loss, instance_loss
from zmdist.progress import Progress
from zmdist.selection.probe import small_ops

log = logging.getLogger("zmdist")
PREDICT_CHUNK = 65536


@dataclass
class UpdpConfig:
    steps: int = option(300, "training steps (0 with updp_checkpoint: select with the loaded model as is)", min=0)
    batch_size: int = option(256, "pool samples per step", min=2)
    lr: float = option(1e-3, "AdamW learning rate", min=0.0, min_exclusive=True)
    n_ctx: int = option(16, "learnable prompt vectors", min=1)
    hidden: int = option(256, "hidden width of both heads", min=1)
    instance_dim: int = option(128, "output width of the instance head", min=1)
    noise: float = option(0.3, "view augmentation: norm of the Gaussian noise added to an embedding", min=0.0)
    feature_drop: float = option(0.1, "view augmentation: share of coordinates zeroed", min=0.0, max=0.9)
    instance_temperature: float = option(0.5, "NT-Xent temperature of the instance head", min=0.0, min_exclusive=True)
    cluster_temperature: float = option(1.0, "contrast temperature of the cluster head", min=0.0, min_exclusive=True)
    checkpoint: str = option("", "a saved UP-DP model (.safetensors) to start from, e.g. learned on another "
                                 "dataset; its cluster head is re-initialised when its K differs from budget")


class UpdpModel(nn.Module):
    """Prompt vectors + instance head + cluster head on the joint feature (see module docstring)."""

    def __init__(self, dim: int, clusters: int, n_ctx: int, hidden: int, instance_dim: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(n_ctx, dim) * 0.02)
        self.scale = nn.Parameter(torch.tensor(10.0))
        joint = dim + n_ctx
        self.instance_head = nn.Sequential(nn.Linear(joint, hidden), nn.ReLU(), nn.Linear(hidden, instance_dim))
        self.cluster_head = nn.Sequential(nn.Linear(joint, hidden), nn.ReLU(), nn.Linear(hidden, clusters))

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        sims = F.normalize(x, dim=1) @ F.normalize(self.prompts, dim=1).T
        return torch.cat([x, self.scale * sims], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(instance features, cluster probabilities) of embeddings ``x``."""
        h = self.joint(x)
        return self.instance_head(h), self.cluster_head(h).softmax(1)

    def shape_info(self) -> dict[str, str]:
        return {"dim": str(self.prompts.shape[1]), "clusters": str(self.cluster_head[-1].out_features),
                "n_ctx": str(self.prompts.shape[0]), "hidden": str(self.instance_head[0].out_features),
                "instance_dim": str(self.instance_head[-1].out_features)}


def augment(x: torch.Tensor, noise: float, drop: float, generator: torch.Generator) -> torch.Tensor:
    """One feature-level view: noise of norm ~``noise``, ``drop`` of the coordinates zeroed, unit norm."""
    eps = torch.randn(x.shape, generator=generator, device=x.device) * (noise / x.shape[1] ** 0.5)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= drop
    return F.normalize((x + eps) * keep, dim=1)


def save_model(model: UpdpModel, path: Path) -> None:
    """Weights and shape metadata, written atomically: a killed run never leaves half a model to reuse."""
    atomic_safetensors(path, model.state_dict(), model.shape_info())


def load_model(path: str, dim: int, clusters: int, cfg: UpdpConfig) -> tuple[UpdpModel, dict[str, Any]]:
    """A model shaped by the checkpoint's metadata with its weights; what was reused and re-initialised.

    The prompts and the instance head carry over to any pool of the same embedding width; a cluster head
    made for another K cannot, so it is re-initialised (and said so)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"updp.checkpoint={path}: no such file")
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if "dim" not in meta:
        raise ValueError(f"updp.checkpoint={path} is not a UP-DP model saved by zmdist select (no shape metadata)")
    if int(meta["dim"]) != dim:
        raise ValueError(f"updp.checkpoint={path} was learned on {meta['dim']}-d embeddings, this pool has {dim}-d: "
                         "use embeddings of a teacher with the same embedding width")
    model = UpdpModel(dim, clusters, int(meta["n_ctx"]), int(meta["hidden"]), int(meta["instance_dim"]))
    reinit = []
    if int(meta["clusters"]) != clusters:
        state = {k: v for k, v in state.items() if not k.startswith("cluster_head.")}
        reinit.append("cluster_head")
    model.load_state_dict(state, strict=not reinit)
    return model, {"checkpoint": str(path), "reinitialised": reinit,
                   "reused": sorted({k.split(".")[0] for k in state})}


def train_updp(features: torch.Tensor, clusters: int, cfg: UpdpConfig, *, seed: int, device: torch.device,
               progress: bool = False) -> tuple[UpdpModel, dict[str, Any]]:
    """Train (or fine-tune from ``cfg.checkpoint``) on the pool's embeddings; returns the model and a log."""
    torch.manual_seed(int(seed))
    dim = features.shape[1]
    if cfg.checkpoint:
        model, info = load_model(cfg.checkpoint, dim, clusters, cfg)
        if cfg.steps == 0 and info["reinitialised"]:
            raise ValueError(f"updp.checkpoint={cfg.checkpoint} has a cluster head for another number of clusters "
                             f"than budget={clusters}: train it (updp.steps > 0) or use budget = its cluster count")
    else:
        if cfg.steps == 0:
            raise ValueError("updp.steps=0 needs updp.checkpoint=PATH (a model to select with)")
        model, info = UpdpModel(dim, clusters, cfg.n_ctx, cfg.hidden, cfg.instance_dim), {}
    model.to(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, len(features))
    losses = []
    with Progress(cfg.steps, "updp", "step", enabled=progress) as bar, small_ops(device):
        for _ in range(cfg.steps):
            idx = torch.randint(len(features), (batch,), generator=gen, device=device).cpu()
            x = features[idx].to(device, torch.float32)
            z1, p1 = model(augment(x, cfg.noise, cfg.feature_drop, gen))
            z2, p2 = model(augment(x, cfg.noise, cfg.feature_drop, gen))
            loss = (instance_loss(z1, z2, cfg.instance_temperature)
                    + cluster_loss(p1, p2, cfg.cluster_temperature))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.update(1)
    info.update(steps=cfg.steps, loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None)
    return model.eval(), info


@torch.no_grad()
def cluster_probs(model: UpdpModel, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, K) cluster probabilities on the CPU, in row blocks (memory O(N K))."""
    return torch.cat([model(features[s:s + PREDICT_CHUNK].to(device, torch.float32))[1].cpu()
                      for s in range(0, len(features), PREDICT_CHUNK)])
