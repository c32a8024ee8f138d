//! Flow-matching samplers and guidance.
