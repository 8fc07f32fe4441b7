"""The named choices of a forecaster (cell, head, input scaling), without torch, so the CLI and the run spec can
offer them and answer fast."""

from __future__ import annotations

from typing import Literal

Cell = Literal["lstm", "gru"]
Head = Literal["last", "per_step"]
# How a window is normalised inside the network (inputs and outputs alike; see `RecurrentForecaster`):
#   series: the series scaler alone (mean/std of the training part);
#   last:   location = the window's last value (its origin), scale = the series std: the network predicts the
#           change from now, so levels never seen in training (trends, level shifts) are forecast from where
#           the series is now;
#   window: location = the window's mean, scale = the window's std (RevIN without the affine part);
#   last_level: as "last", with the series-scaled values as a second input channel, so the network still sees
#           where in its usual range the series is (what "series" knows) while forecasting from the last value.
Scaling = Literal["series", "last", "window", "last_level"]
# What training may be asked for: a scaling, or "auto": train with each of `AUTO_SCALINGS` and keep the one with
# the lower validation loss (both losses are in the same series-scaled units), so a trending series gets "last"
# and a stationary one keeps "series" without anyone looking at the data first.
ScalingChoice = Literal["auto", "series", "last", "window", "last_level"]
AUTO_SCALINGS: tuple[Scaling, ...] = ("series", "last")
