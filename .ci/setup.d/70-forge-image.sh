# forge's static binary and forge's own image (issue 13), for the tests that run them in containers:
# image/build.sh builds forge for x86_64-unknown-linux-musl (adding the rustup target and Debian's
# musl-tools when missing), then builds image/Dockerfile with that binary and pushes it to the test
# registry. Sourced by .ci/run as root, after the registry is up. Exports FORGE_TEST_STATIC_FORGE
# (the binary) and FORGE_TEST_FORGE_IMAGE (the pushed image, by digest).
forge_image_ref=${FORGE_TEST_REGISTRY:-127.0.0.1:5000}/forge-test/forge:ci
forge_image_digest=$(bash image/build.sh "$forge_image_ref" --push | tail -n 1)
case "$forge_image_digest" in
  sha256:*) ;;
  *) echo "image/build.sh printed no digest: $forge_image_digest" >&2; false ;;
esac
export FORGE_TEST_STATIC_FORGE=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/forge
export FORGE_TEST_FORGE_IMAGE=${forge_image_ref%:*}@$forge_image_digest
echo "forge image: $FORGE_TEST_FORGE_IMAGE"
unset forge_image_ref forge_image_digest
