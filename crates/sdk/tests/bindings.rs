//! The committed Kotlin and Swift sources (scripts/sdk-bindings) cannot print the
//! relay's token: it is an `AccountToken` object whose string forms are Rust's
//! redacted Display and Debug, never a record or data class that prints its fields.
//! Kotlin and Swift are not run here, so their generated text is read instead.

use std::path::Path;

fn generated(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bindings")
        .join(path);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/sdk-bindings)", path.display()))
}

/// The text from `start` to the first `end` after it.
fn between<'a>(source: &'a str, start: &str, end: &str) -> &'a str {
    let at = source
        .find(start)
        .unwrap_or_else(|| panic!("no `{start}` in the generated source"));
    let rest = &source[at..];
    let len = rest
        .find(end)
        .unwrap_or_else(|| panic!("no `{end}` after `{start}` in the generated source"));
    &rest[..len]
}

#[test]
fn kotlin_account_token_is_an_object_that_prints_redacted() {
    let kt = generated("kotlin/generated/dev/backlock/backlock.kt");
    assert!(
        !kt.contains("data class AccountToken"),
        "AccountToken must not be a Kotlin data class: its toString would print the token"
    );
    let class = between(
        &kt,
        "open class AccountToken:",
        "object FfiConverterTypeAccountToken",
    );
    assert!(
        class.contains("override fun toString(): String")
            && class.contains("uniffi_backlock_fn_method_accounttoken_uniffi_trait_display"),
        "AccountToken's toString must be Rust's redacted Display:\n{class}"
    );
    let record = between(&kt, "data class VaultConfig", "\n)");
    assert!(
        record.contains("var `token`: AccountToken?"),
        "VaultConfig's token must be an AccountToken, not a String:\n{record}"
    );
}

#[test]
fn swift_account_token_is_an_object_that_prints_redacted() {
    let swift = generated("swift/generated/backlock.swift");
    assert!(
        !swift.contains("struct AccountToken"),
        "AccountToken must not be a Swift struct: its default description prints its fields"
    );
    let class = between(
        &swift,
        "open class AccountToken:",
        "struct FfiConverterTypeAccountToken",
    );
    for (property, method) in [
        (
            "public var description: String",
            "accounttoken_uniffi_trait_display",
        ),
        (
            "public var debugDescription: String",
            "accounttoken_uniffi_trait_debug",
        ),
    ] {
        assert!(
            class.contains(property) && class.contains(method),
            "AccountToken's `{property}` must be Rust's redacted Display/Debug:\n{class}"
        );
    }
    let record = between(&swift, "public struct VaultConfig", "\n}");
    assert!(
        record.contains("public var token: AccountToken?"),
        "VaultConfig's token must be an AccountToken, not a String:\n{record}"
    );
}
