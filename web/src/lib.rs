//! The wasm package for in-browser inference. Its API arrives with the web issue.
