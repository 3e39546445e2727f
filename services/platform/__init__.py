"""The whole platform in one command: `kadai up` (runner), its backends (external or embedded), what it
starts (plan), its start-up text (banner) and log attribution (logs); `kadai demo` drives the order flow."""
