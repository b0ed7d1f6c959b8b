"""A spike-timing classification task that only delays can solve.

Every class uses the same ``channels`` input channels, and every channel spikes exactly **once** per sample;
classes differ only in the order: class ``k`` fires channel ``c`` at ``onset + spacing * perm_k[c]`` (each
class a fixed random permutation, no two channels of a pattern at the same step). Onsets are uniform so that
the whole pattern fits, and Poisson background noise is added. Hence, for every class, a sample is (up to the
onset) the same *bag of time steps* -- one pattern spike per step, plus class-independent noise: a network
without memory or delays, reading out a sum over time, is at chance by construction. Recognising a class
means aligning its spikes in time: a delay per synapse (``delay_c = spacing * (channels - 1 - perm_k[c])``)
makes them coincide, which a threshold neuron with short memory (LIF tau ~ 1) detects.

Keep the hidden layer small (~8 neurons): with many neurons, random fixed delays produce enough partial
coincidences to solve it too, and the task would no longer prove that delays are *learned*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["TimingTask"]


@dataclass
class TimingTask:
    """Generator of the timing task (see the module docstring).

    Attributes:
        channels: Input channels (one spike each per sample).
        classes: Number of classes (patterns).
        spacing: Steps between consecutive spikes of a pattern; the pattern spans
            ``spacing * (channels - 1) + 1`` steps (the delays needed reach ``spacing * (channels - 1)``).
        steps: Sequence length ``T``; at least the pattern span.
        noise: Poisson background rate per channel and step.
        pattern_seed: Seed of the class permutations (fixed per task: train and test share it).
    """

    channels: int = 8
    classes: int = 4
    spacing: int = 2
    steps: int = 48
    noise: float = 0.02
    pattern_seed: int = 0
    patterns: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("channels", "classes", "spacing", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TimingTask.{name}={value!r}: expected a positive int.")
        if self.classes < 2:
            raise ValueError(f"TimingTask.classes={self.classes}: expected at least 2 classes.")
        if self.steps < self.span:
            raise ValueError(
                f"TimingTask.steps={self.steps} is shorter than the pattern span {self.span} (= spacing * "
                f"(channels - 1) + 1); use steps >= {self.span}, or fewer channels / a smaller spacing."
            )
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"TimingTask.noise={self.noise!r}: expected a rate in [0, 1).")
        g = torch.Generator().manual_seed(self.pattern_seed)
        self.patterns = torch.stack([torch.randperm(self.channels, generator=g) for _ in range(self.classes)])

    @property
    def span(self) -> int:
        """Steps covered by one pattern."""
        return self.spacing * (self.channels - 1) + 1

    @property
    def max_delay_needed(self) -> int:
        """``max_delay`` that lets a synapse align any two spikes of a pattern."""
        return self.span

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples.

        Returns:
            ``(x, y)``: spikes ``x [T, n, channels]`` (float32 0/1, SpikingJelly multi-step layout) and labels
            ``y [n]`` (int64, balanced up to rounding).
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: expected a positive int (number of samples).")
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % self.classes
        y = y[torch.randperm(n, generator=g)]
        onset = torch.randint(0, self.steps - self.span + 1, (n,), generator=g)
        x = (torch.rand(self.steps, n, self.channels, generator=g) < self.noise).float()
        t = onset[:, None] + self.spacing * self.patterns[y]  # [n, channels]
        x[t, torch.arange(n)[:, None], torch.arange(self.channels)[None, :]] = 1.0
        return x, y
