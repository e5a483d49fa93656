"""Integrations with other training libraries; each imports its library, so import the
module you need (`moedesk.integrations.transformers`), never this package's contents."""
