def build(out, model_dir):
    return {}
