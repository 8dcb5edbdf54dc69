"""Memorization probes (He et al. 2024): transformed training images scored as generated sets, to learn which
layers of the encoder respond to low-level copying and which to semantic copying.

- :mod:`memray.probes.config`: :class:`~memray.probes.config.ProbesConfig` and the probe names and parameters
  (free of image code: job configs import it);
- :mod:`memray.probes.transforms`: the transforms, ``f(img, rng, **params)``, and their registry ``PROBES``;
- :mod:`memray.probes.build`: a seeded training sample → one ``.tar`` per probe + ``manifest.json``;
- :mod:`memray.probes.summary`: the probe sets' C_T scores → ``probes.parquet`` and a recommendation of layers.

Nothing is imported here, so importing the config does not load the image code.
"""
