"""A joined host's agent (`mcpmux-router --join`): the core's hands on another host's supervisord."""
