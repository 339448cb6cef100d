"""The GEM module: three metadata-conditioned latent groups and a count decoder.

Pure torch (compare scvi-tools' ``BaseModuleClass``): tensors in, tensors and a
:class:`LossOutput` out; no AnnData, no files, no Lightning.

- ``inference``: q(z_g | x) for the biological, technical and perturbation groups,
  from LayerNorm(log1p(CPM)) of the genes the sample's study measured;
- ``prior``: p(z_g | metadata_g), one MLP per group over that group's fields;
- ``generative``: decoder z -> softmax over genes (scaled by library size) with a
  per-gene negative-binomial dispersion, plus the on-target term of gene-targeting
  perturbations at the target gene's logit;
- classifier heads on each group's latent predict the fields that group owns;
- ``loss``: NB log-likelihood on measured genes, KL(q || p) per group, classifier
  cross-entropy, and the reconstruction from prior latents (the conditional VAE's
  "hybrid" objective, so that generation from metadata is trained directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from opengem.contract import LatentGroup
from opengem.model.vocab import NUMERIC_FIELDS, Vocabulary, field_group

GROUPS = (LatentGroup.BIOLOGICAL, LatentGroup.TECHNICAL, LatentGroup.PERTURBATION)


@dataclass(frozen=True)
class ModelConfig:
    """Widths and loss weights. Stored in the bundle; equal configs give equal models."""

    n_genes: int
    hidden: int = 128
    latent_biological: int = 32
    latent_technical: int = 8
    latent_perturbation: int = 16
    embedding: int = 16
    prior_hidden: int = 64
    dropout: float = 0.1
    kl_weight: float = 1.0
    classifier_weight: float = 1.0
    prior_reconstruction_weight: float = 0.5

    def latent_dim(self, group: LatentGroup) -> int:
        return {
            LatentGroup.BIOLOGICAL: self.latent_biological,
            LatentGroup.TECHNICAL: self.latent_technical,
            LatentGroup.PERTURBATION: self.latent_perturbation,
        }[group]


@dataclass
class LossOutput:
    """All terms of one batch's loss (means over the batch)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor  # negative log-likelihood per sample
    kl: dict[str, torch.Tensor] = field(default_factory=dict)
    classification: dict[str, torch.Tensor] = field(default_factory=dict)
    prior_reconstruction: torch.Tensor | None = None
    accuracy: dict[str, torch.Tensor] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        out = {
            "loss": float(self.loss.detach()),
            "reconstruction": float(self.reconstruction.detach()),
        }
        out.update({f"kl_{k}": float(v.detach()) for k, v in self.kl.items()})
        out.update({f"ce_{k}": float(v.detach()) for k, v in self.classification.items()})
        if self.prior_reconstruction is not None:
            out["prior_reconstruction"] = float(self.prior_reconstruction.detach())
        return out


def nb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Negative-binomial log-likelihood (mean ``mu``, inverse dispersion ``theta``), per entry."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


class _Mlp(nn.Sequential):
    def __init__(self, n_in: int, n_hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden), nn.GELU(), nn.Dropout(dropout)
        )


class GEMModule(nn.Module):
    """The generative expression model (see the module docstring)."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary) -> None:
        super().__init__()
        self.config = config
        c = config
        # ---- encoder q(z|x): the first layer's columns are gathered per study's genes
        self.enc_in = nn.Parameter(torch.empty(c.hidden, c.n_genes))
        nn.init.xavier_uniform_(self.enc_in)
        self.enc_bias = nn.Parameter(torch.zeros(c.hidden))
        self.encoder = nn.Sequential(
            nn.LayerNorm(c.hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            _Mlp(c.hidden, c.hidden, c.dropout),
        )
        self.q_heads = nn.ModuleDict(
            {g.value: nn.Linear(c.hidden, 2 * c.latent_dim(g)) for g in GROUPS}
        )
        # ---- metadata embeddings and priors p(z_g | metadata_g)
        self.group_fields = {g: [f for f in vocab.fields if field_group(f) is g] for g in GROUPS}
        self.group_numeric = {g: [f for f in NUMERIC_FIELDS if field_group(f) is g] for g in GROUPS}
        self.embeddings = nn.ModuleDict(
            {
                f: nn.EmbeddingBag(len(fv.tokens), c.embedding, mode="mean")
                for f, fv in vocab.fields.items()
            }
        )
        self.unit_embedding = nn.Embedding(len(vocab.units), 4)
        self.priors = nn.ModuleDict()
        for g in GROUPS:
            n_in = c.embedding * len(self.group_fields[g]) + sum(
                2 + (4 if f != "age_years" else 0) for f in self.group_numeric[g]
            )
            self.priors[g.value] = nn.Sequential(
                _Mlp(n_in, c.prior_hidden, 0.0), nn.Linear(c.prior_hidden, 2 * c.latent_dim(g))
            )
        # ---- decoder p(x|z)
        n_latent = sum(c.latent_dim(g) for g in GROUPS)
        self.decoder = nn.Sequential(
            _Mlp(n_latent, c.hidden, c.dropout), _Mlp(c.hidden, c.hidden, 0.0)
        )
        self.dec_out = nn.Parameter(torch.empty(c.n_genes, c.hidden))
        nn.init.xavier_uniform_(self.dec_out)
        self.dec_bias = nn.Parameter(torch.zeros(c.n_genes))
        self.log_theta = nn.Parameter(torch.full((c.n_genes,), 2.0))
        # on-target logit shift per targeting kind: [none, knock-down/out, overexpression]
        self.on_target = nn.Parameter(torch.tensor([0.0, -2.0, 2.0]))
        # ---- classifier heads on each group's latent
        self.classifiers = nn.ModuleDict(
            {
                f: nn.Linear(c.latent_dim(field_group(f)), len(fv.classes))
                for f, fv in vocab.fields.items()
                if len(fv.classes) >= 2
            }
        )

    # ------------------------------------------------------------------ inference
    def inference(
        self, x: torch.Tensor, genes: torch.Tensor | None = None
    ) -> dict[LatentGroup, tuple[torch.Tensor, torch.Tensor]]:
        """q(z_g | x) as (mean, std) per group.

        ``x`` holds counts of the genes in ``genes`` (all genes when None).
        """
        lib = x.sum(dim=1, keepdim=True).clamp(min=1.0)
        h = torch.log1p(x / lib * 1e6)
        h = F.layer_norm(h, h.shape[-1:])
        weight = self.enc_in if genes is None else self.enc_in[:, genes]
        h = self.encoder(F.linear(h, weight, self.enc_bias))
        out = {}
        for g in GROUPS:
            mean, raw = self.q_heads[g.value](h).chunk(2, dim=-1)
            out[g] = (mean, F.softplus(raw) + 1e-4)
        return out

    def prior(
        self, meta: dict[str, torch.Tensor]
    ) -> dict[LatentGroup, tuple[torch.Tensor, torch.Tensor]]:
        """p(z_g | metadata_g) as (mean, std) per group."""
        out = {}
        for g in GROUPS:
            parts = [
                self.embeddings[f](meta[f"cat:{f}:idx"], meta[f"cat:{f}:off"])
                for f in self.group_fields[g]
            ]
            for f in self.group_numeric[g]:
                parts.append(meta[f"num:{f}"])
                if f != "age_years":
                    parts.append(self.unit_embedding(meta[f"unit:{f}"]))
            mean, raw = self.priors[g.value](torch.cat(parts, dim=-1)).chunk(2, dim=-1)
            out[g] = (mean, F.softplus(raw) + 1e-4)
        return out

    # ----------------------------------------------------------------- generative
    def generative(
        self,
        z: dict[LatentGroup, torch.Tensor],
        library: torch.Tensor,
        meta: dict[str, torch.Tensor],
        genes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decoder: expected counts ``mu`` and dispersion ``theta`` over ``genes``."""
        h = self.decoder(torch.cat([z[g] for g in GROUPS], dim=-1))
        weight = self.dec_out if genes is None else self.dec_out[genes]
        bias = self.dec_bias if genes is None else self.dec_bias[genes]
        logits = F.linear(h, weight, bias)
        rows, cols, shift = self._on_target(meta, genes)
        if rows.numel():
            logits = logits.index_put((rows, cols), logits[rows, cols] + shift)
        scale = torch.softmax(logits, dim=-1)
        theta = torch.exp(self.log_theta if genes is None else self.log_theta[genes])
        return {"mu": library * scale, "scale": scale, "theta": theta.expand_as(scale)}

    def _on_target(
        self, meta: dict[str, torch.Tensor], genes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, logit shifts) of the targeted genes of gene-targeting perturbations."""
        target, kind = meta["target_gene"], meta["target_kind"]
        active = (target >= 0) & (kind > 0)
        if not bool(active.any()):
            empty = torch.zeros(0, dtype=torch.long, device=target.device)
            return empty, empty, torch.zeros(0, device=target.device)
        if genes is None:
            cols = target
        else:  # position of each target within the gathered genes, if present
            lookup = torch.full((self.config.n_genes,), -1, dtype=torch.long, device=genes.device)
            lookup[genes] = torch.arange(len(genes), device=genes.device)
            cols = torch.where(target >= 0, lookup[target.clamp(min=0)], -1)
        rows = torch.nonzero(active & (cols >= 0)).squeeze(-1)
        return rows, cols[rows], self.on_target[kind[rows]]

    def classify(self, z: dict[LatentGroup, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Classifier logits per field, from the latent of the group that owns the field."""
        return {f: head(z[field_group(f)]) for f, head in self.classifiers.items()}

    # ----------------------------------------------------------------------- loss
    def loss(
        self,
        x: torch.Tensor,
        meta: dict[str, torch.Tensor],
        labels: dict[str, torch.Tensor],
        genes: torch.Tensor | None = None,
        kl_weight: float | None = None,
    ) -> LossOutput:
        c = self.config
        beta = c.kl_weight if kl_weight is None else kl_weight
        library = x.sum(dim=1, keepdim=True)
        q = self.inference(x, genes)
        p = self.prior(meta)
        z = {g: Normal(*q[g]).rsample() for g in GROUPS}
        out = self.generative(z, library, meta, genes)
        nll = -nb_log_likelihood(x, out["mu"], out["theta"]).sum(dim=-1)
        kl = {
            g.value: kl_divergence(Normal(*q[g]), Normal(*p[g])).sum(dim=-1).mean() for g in GROUPS
        }
        elbo = nll.mean() + beta * sum(kl.values())
        prior_nll = None
        if c.prior_reconstruction_weight > 0:
            zp = {g: Normal(*p[g]).rsample() for g in GROUPS}
            prior_out = self.generative(zp, library, meta, genes)
            prior_nll = -nb_log_likelihood(x, prior_out["mu"], prior_out["theta"]).sum(dim=-1)
            elbo = elbo + c.prior_reconstruction_weight * prior_nll.mean()
        # per measured gene, so the classifier weight means the same for any gene panel
        total = elbo / x.shape[-1]
        ce, acc = {}, {}
        logits = self.classify({g: q[g][0] for g in GROUPS})
        for f, y in labels.items():
            known = y >= 0
            if f in logits and bool(known.any()):
                ce[f] = F.cross_entropy(logits[f][known], y[known])
                acc[f] = (logits[f][known].argmax(-1) == y[known]).float().mean()
        if ce:
            total = total + c.classifier_weight * sum(ce.values())
        return LossOutput(
            total, nll.mean(), kl, ce, None if prior_nll is None else prior_nll.mean(), acc
        )
