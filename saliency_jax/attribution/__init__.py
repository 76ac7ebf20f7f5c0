"""Attribution methods: each maps a logit function and an image to a gradient-shaped map."""
