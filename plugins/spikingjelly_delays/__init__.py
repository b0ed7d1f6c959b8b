"""SpikingJelly plugin of dclszoo: learnable synaptic delays for SpikingJelly 2.0 networks.

``dclszoo.patch(net, dclszoo.DelayConfig(max_delay=25))`` replaces the synapses of a SpikingJelly network --
``layer.Linear`` and ``nn.Linear`` inside ``layer.SeqToANNContainer`` (targets ``"linear"``), and
``layer.Conv1d/2d`` and ``nn.Conv1d/2d`` inside ``SeqToANNContainer`` (targets ``"conv"``) -- by delay synapses
(:class:`dclszoo.DelayedLinear`, :class:`dclszoo.DelayedConv1d/2d`) that keep the weights and step modes.
The new synapses start with all delays 0 in integer mode (``sigma=0``), so the patched network computes the same
function until training starts; :class:`dclszoo.delays_training.SigmaSchedule` then starts the Gaussian phase at
``DelayConfig.initial_sigma``.

Nothing here imports spikingjelly at import time; :mod:`.patch` and :mod:`.modules` do, lazily.
"""
