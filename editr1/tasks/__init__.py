"""Tasks that plug into editr1 the way a user's would: data, a reward, configs."""
