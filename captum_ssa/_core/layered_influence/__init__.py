"""LayeredInfluence: explanations from the most influential hidden layer.

``explainer`` holds the public class; ``fit`` what its fit keeps; ``reference``
reads the reference set; ``layer_choice`` the candidates and how one is chosen;
``influence`` the monotone influence measure; ``labels`` the classes compared;
``deconvnet`` the projection of the top units back to the input.
"""

from captum_ssa._core.layered_influence.explainer import LayeredInfluence

__all__ = ["LayeredInfluence"]
