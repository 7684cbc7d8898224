"""app: the command line (and, later, the Gradio UI) over the services Palate offers."""
