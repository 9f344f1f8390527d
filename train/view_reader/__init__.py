"""Training side of the learned view reader (`pipeline.models.view_net.ViewNet`): labelled
thumbnails drawn straight from the synthetic worlds' renderers, the fit loop, evaluation per
world and the model card."""
