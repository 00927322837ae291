"""StylusDocs: build, query and compose a catalogue of diffusion adapters (Stylus, Luo et al. 2024).

Importing the package starts nothing and reads no environment variables.
"""

__version__ = "0.1.0"
