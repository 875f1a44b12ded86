//! Worker pods for dtasks (under construction).
