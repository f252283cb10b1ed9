"""Which network steps when: D pre-training and the loss-balancing schedule.

* ``optim.d_pretrain = N``: the first N trainer steps update D only (its
  ``n_critic`` updates each); G's weights do not change until step N + 1.
  A D that already tells real from fake gives G a useful gradient from the
  start (ganhacks #14, "train the discriminator more (sometimes)"; risky
  with the saturating minimax loss, where a strong D starves G).
* ``optim.balance = true``: train D while its loss is above
  ``balance_d_above`` (A) and G while its loss is above ``balance_g_above``
  (B), measured on the current batch before each update; when D did not
  step in a trainer step, G always steps, so the run cannot stall with both
  networks "satisfied".  This is the "principled approach" of ganhacks #11;
  off by default because the same item warns "don't balance
  loss via statistics (unless you have a good reason to)" - the losses of
  the two players are not a measure of who is winning.

Both decisions depend only on the step number and the current losses, so
a resumed run makes the same decisions (no extra checkpoint state).
"""
from __future__ import annotations

import math


class StepSchedule:
    def __init__(self, d_pretrain: int = 0, balance: bool = False, d_above: float = 0.0, g_above: float = 0.0):
        if d_pretrain < 0:
            raise ValueError(f"d_pretrain must be >= 0, got {d_pretrain!r}")
        self.d_pretrain, self.balance = int(d_pretrain), bool(balance)
        self.d_above, self.g_above = float(d_above), float(g_above)

    @property
    def active(self) -> bool:
        return self.d_pretrain > 0 or self.balance

    def g_active(self, step: int) -> bool:
        """Whether G trains at all in (0-based) trainer step ``step`` (False while D pre-trains)."""
        return step >= self.d_pretrain

    def d_update(self, loss_d: float) -> bool:
        """Whether D takes this update, given its loss on the current batch."""
        if not self.balance:
            return True
        return not math.isfinite(loss_d) or loss_d > self.d_above  # a non-finite loss goes on to the NaN guard

    def g_update(self, loss_g: float, d_stepped: bool) -> bool:
        """Whether G takes this update, given its loss and whether D stepped in this trainer step."""
        if not self.balance or not d_stepped:
            return True
        return not math.isfinite(loss_g) or loss_g > self.g_above
