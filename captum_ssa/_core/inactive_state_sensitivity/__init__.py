r"""Inactive state sensitivity, Insens (Szymanski, McCane & Atkinson, 2019).

- ``explainer.py``: :class:`InactiveStateSensitivity`, the public class;
- ``frequency.py``: what ``fit`` counts, the activation frequencies
  :math:`m_i / N_{ref}` over a reference (per position among the real tokens of a
  mask, summed over the ranks of ``torch.distributed``), and how ``attribute``
  reads them;
- ``omega.py``: the sum :math:`\Omega_l` that ``attribute`` computes, from each
  neuron's coefficient (its weighting, the inactive or selected neurons, the
  average of ``"uniform"``) and the layer's Jacobian.
"""

from captum_ssa._core.inactive_state_sensitivity.explainer import InactiveStateSensitivity

__all__ = ["InactiveStateSensitivity"]
