"""Real metric/reward models (CLAP, Synchformer DeSync, Audiobox Aesthetics, StereoCRW, VGGish, PaSST),
each loading a LOCAL checkpoint and registered in `prismaudio.metrics.backends`."""
