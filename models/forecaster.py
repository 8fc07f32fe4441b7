"""One recurrent forecaster (LSTM or GRU, picked by `cell`) and batched prediction over flat-panel windows.

The network maps a window of `lookback` scaled values to the next `horizon` scaled values in one shot
(direct multi-step). Its head is either "last" (the last hidden state of the top layer -> H outputs) or
"per_step" (each of the last H hidden states -> its own step, one shared Linear(hidden, 1)); per_step lets step k
read the state from one horizon earlier, which suits daily and weekly cycles (electricity test MAE 447 against
661 for the LSTM, 468 against 789 for the GRU; docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from models.choices import Cell, Head, Scaling
from models.windows import gather_windows

WINDOW_SCALE_EPS = 1e-4  # added to a window's variance (series-scaled units) so a flat window divides by 0.01
PREDICT_BATCH = 4096  # windows per inference batch (`predict_windows`)


class ForecasterConfig(BaseModel):
    """Hyperparameters of `RecurrentForecaster`; saved as config.json beside the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: Cell = "lstm"
    lookback: int = Field(ge=1, le=100_000, description="observations the network reads per forecast (L)")
    horizon: int = Field(ge=1, le=10_000, description="steps forecast at once (H)")
    # the run spec's defaults (tasks/spec.py; models/ cannot import it, tests/test_spec.py keeps them equal);
    # saved config.json files hold every field, so older models load with the size they were trained at
    hidden_size: int = Field(default=32, ge=1, le=4096, description="units per recurrent layer")
    num_layers: int = Field(default=1, ge=1, le=16, description="stacked recurrent layers")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout between layers and before the head")
    scaling: Scaling = Field(
        default="series",  # models saved before the option existed used the series scaler alone
        description="series: series scaler alone; last: change from the window's last value; window: RevIN-style",
    )
    head: Head = Field(
        default="last",  # models saved before the option existed have a "last" head
        description="last: the last hidden state -> H outputs; per_step: each of the last H hidden states -> 1 output",
    )

    @model_validator(mode="after")
    def _per_step_head_needs_h_states(self) -> ForecasterConfig:
        if self.head == "per_step" and self.lookback < self.horizon:
            raise ValueError(
                f"head 'per_step' reads the last `horizon` ({self.horizon}) hidden states, so `lookback` "
                f"({self.lookback}) must be at least `horizon`; use head 'last' or a longer lookback"
            )
        return self


class RecurrentForecaster(nn.Module):
    """LSTM or GRU encoder plus a linear head: `x [B, L, 1]` (scaled) -> `y_hat [B, H]` (scaled).

    Hyperparameters (all from `ForecasterConfig`):
      - `cell`: "lstm" (`nn.LSTM`) or "gru" (`nn.GRU`).
      - `lookback` (L): input length; the network itself accepts any length, windows are cut to L.
      - `horizon` (H): number of outputs of the linear head, one per future step.
      - `hidden_size`: width of every recurrent layer and of the head's input.
      - `num_layers`: stacked recurrent layers (batch_first).
      - `dropout`: applied between recurrent layers (when `num_layers` > 1) and to the head's input.
      - `head`: "last" or "per_step" (see the module docstring).
      - `scaling`: how each window is normalised on the way in and de-normalised on the way out, from statistics
        of the window itself (`window_statistics`; the choices are described in models/choices.py). Inputs and
        outputs stay in series-scaled units outside the network, so the loss is comparable across scalings.
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        rnn_type = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_type(
            input_size=2 if config.scaling == "last_level" else 1,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.horizon if config.head == "last" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        location, scale = self.window_statistics(x)  # [B, L, 1] -> [B, 1, 1] each
        inputs = (x - location) / scale  # [B, L, 1]
        if self.config.scaling == "last_level":
            inputs = torch.cat([inputs, x], dim=-1)  # [B, L, 1] -> [B, L, 2]
        out, _ = self.rnn(inputs)  # [B, L, C] -> [B, L, hidden]
        if self.config.head == "per_step":
            steps = self.dropout(out[:, -self.config.horizon :, :])  # [B, L, hidden] -> [B, H, hidden]
            y = self.head(steps).squeeze(-1)  # [B, H, hidden] -> [B, H]
        else:
            last = self.dropout(out[:, -1, :])  # [B, L, hidden] -> [B, hidden]
            y = self.head(last)  # [B, hidden] -> [B, H]
        return y * scale[:, :, 0] + location[:, :, 0]  # [B, H] back to series-scaled units

    def window_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale `[B, 1, 1]` that normalise each window `x [B, L, 1]` for `config.scaling`."""
        if self.config.scaling in ("last", "last_level"):
            return x[:, -1:, :], torch.ones_like(x[:, -1:, :])  # [B, L, 1] -> [B, 1, 1]
        if self.config.scaling == "window":
            location = x.mean(dim=1, keepdim=True)  # [B, L, 1] -> [B, 1, 1]
            spread = x.var(dim=1, keepdim=True, unbiased=False)  # [B, L, 1] -> [B, 1, 1]
            return location, torch.sqrt(spread + WINDOW_SCALE_EPS)
        return torch.zeros_like(x[:, -1:, :]), torch.ones_like(x[:, -1:, :])


_BF16_SUPPORT: dict[tuple[str, str], bool] = {}


def bf16_autocast_supported(model: RecurrentForecaster, device: torch.device) -> bool:
    """Whether this device runs the model under bf16 autocast (forward and backward); CPU: always False.

    cuDNN gained bf16 RNN kernels late (cuDNN 9.13), so the first use on a CUDA device probes a tiny
    batch and falls back to float32 when the kernels are missing, instead of failing mid-training.
    """
    if device.type != "cuda":
        return False
    key = (str(device), model.config.cell)
    if key not in _BF16_SUPPORT:
        with torch.random.fork_rng(devices=[]):  # the probe must not shift the caller's seeded CPU RNG
            probe = RecurrentForecaster(model.config.model_copy(update={"hidden_size": 8, "num_layers": 1}))
        probe = probe.to(device)
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = probe(torch.zeros(2, 4, 1, device=device))  # [2, 4, 1] -> [2, H]
            out.float().sum().backward()
            torch.cuda.synchronize(device)
            _BF16_SUPPORT[key] = True
        except RuntimeError:
            _BF16_SUPPORT[key] = False
    return _BF16_SUPPORT[key]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".

    Asking for CUDA on a machine without it is a clear error, not a silent fall-back to CPU.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was asked for but this machine has no CUDA; use 'cpu' or 'auto'")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


def predict_windows(
    model: RecurrentForecaster,
    values: torch.Tensor,
    starts: np.ndarray | torch.Tensor,
    lookback: int,
    horizon: int,
    batch_size: int = PREDICT_BATCH,
) -> np.ndarray:
    """Forecasts `[N, H]` (scaled units) for the windows starting at flat indices `starts [N]` of `values [total]`.

    Inputs are `values[s : s + lookback]`; nothing after the origin is read, so `values` may end at the last
    origin. Runs on the model's device in batches under inference mode (bf16 autocast on CUDA when supported).
    """
    if horizon != model.config.horizon:
        raise ValueError(f"`horizon` ({horizon}) differs from the model's horizon ({model.config.horizon})")
    device = model_device(model)
    n = len(starts)
    if n == 0:
        return np.zeros((0, horizon), dtype=np.float32)
    values = values.to(device=device, dtype=torch.float32)
    starts_t = torch.as_tensor(starts, dtype=torch.int64).to(device)  # [N]
    use_bf16 = bf16_autocast_supported(model, device)
    was_training = model.training
    model.eval()
    out = torch.empty(n, horizon, dtype=torch.float32, device=device)  # [N, H]
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for i in range(0, n, batch_size):
                x, _ = gather_windows(values, starts_t[i : i + batch_size], lookback, 0)  # [B] -> [B, L, 1]
                out[i : i + batch_size] = model(x).float()  # [B, L, 1] -> [B, H]
    finally:
        model.train(was_training)
    return out.cpu().numpy()
