//! `uniffi-bindgen`, built from the workspace so that the generated code matches the
//! `uniffi` version the SDK's scaffolding was built with.

fn main() {
    uniffi::uniffi_bindgen_main()
}
