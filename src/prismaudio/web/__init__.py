"""The web demo (`prismaudio demo`): a gradio page over `PrismAudioPipeline`, offline by construction.

`command` (argparse wiring, environment, server lifetime), `app` (the page), `jobs` (the temporary
folder, upload checks, planning and generation, free of gradio). Importing this package does not
import gradio.
"""
