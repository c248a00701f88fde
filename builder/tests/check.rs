//! Build checks (`forge build --check`): each of BuildKit's rules that forge implements, broken
//! once with the line it is reported on, and the forms each rule lets pass (as BuildKit's rule
//! pages describe them, BuildKit 0.16's rule set).

use std::collections::BTreeMap;

use forge_builder::frontend::dockerfile::check::{CheckOptions, RULES, check};
use forge_builder::frontend::dockerfile::parse_file;

/// The findings for `src` as `(rule, line, message)`; base images have the environment `env`
/// unless they are named `unknown/...`.
fn findings_with(src: &str, args: &[(&str, &str)]) -> Vec<(String, usize, String)> {
    let df = parse_file("Dockerfile", src).unwrap();
    let build_args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let base_env = |reference: &str| {
        (!reference.starts_with("unknown/")).then(|| vec!["PATH".to_string(), "HOME".to_string()])
    };
    check(
        &df,
        &CheckOptions {
            build_args: &build_args,
            base_env: &base_env,
        },
    )
    .unwrap()
    .into_iter()
    .map(|f| (f.rule.name.to_string(), f.span.start.line, f.message))
    .collect()
}

fn findings(src: &str) -> Vec<(String, usize, String)> {
    findings_with(src, &[])
}

/// `(rule, line)` pairs only.
fn rules(src: &str) -> Vec<(String, usize)> {
    findings(src).into_iter().map(|(r, l, _)| (r, l)).collect()
}

fn pairs(want: &[(&str, usize)]) -> Vec<(String, usize)> {
    want.iter().map(|(r, l)| (r.to_string(), *l)).collect()
}

#[test]
fn each_rule_is_reported_where_it_is_broken_with_buildkits_message() {
    // (Dockerfile, rule, line, message)
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "FROM alpine AS BuilderBase\n",
            "StageNameCasing",
            1,
            "Stage name 'BuilderBase' should be lowercase",
        ),
        (
            "FROM alpine as builder\n",
            "FromAsCasing",
            1,
            "'as' and 'FROM' keywords' casing do not match",
        ),
        (
            "FROM alpine\nRUN echo a \\\n\n  b\n",
            "NoEmptyContinuation",
            3,
            "Empty continuation line",
        ),
        (
            "FROM alpine\nRUN a\nrun b\n",
            "ConsistentInstructionCasing",
            3,
            "Command 'run' should match the case of the command majority (uppercase)",
        ),
        (
            "FROM alpine AS b\nFROM alpine AS b\n",
            "DuplicateStageName",
            2,
            "Duplicate stage name \"b\", stage names should be unique",
        ),
        (
            "FROM alpine AS context\n",
            "ReservedStageName",
            1,
            "Stage name should not use the same name as reserved stage \"context\"",
        ),
        (
            "FROM alpine\nENTRYPOINT my-program start\n",
            "JSONArgsRecommended",
            2,
            "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals",
        ),
        (
            "FROM alpine\nMAINTAINER me\n",
            "MaintainerDeprecated",
            2,
            "Maintainer instruction is deprecated in favor of using label",
        ),
        (
            "ARG VERSION=1\nFROM alpine:$VERSON\n",
            "UndefinedArgInFrom",
            2,
            "FROM argument 'VERSON' is not declared (did you mean VERSION?)",
        ),
        (
            "FROM alpine\nWORKDIR app/src\n",
            "WorkdirRelativePath",
            2,
            "Relative workdir \"app/src\" can have unexpected results if the base image changes",
        ),
        (
            "FROM alpine\nENV PATH=$PAHT:/app/bin\n",
            "UndefinedVar",
            2,
            "Usage of undefined variable '$PAHT' (did you mean $PATH?)",
        ),
        (
            "FROM alpine\nHEALTHCHECK CMD [\"a\"]\nHEALTHCHECK CMD [\"b\"]\n",
            "MultipleInstructionsDisallowed",
            2,
            "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used",
        ),
        (
            "FROM alpine\nLABEL maintainer me\n",
            "LegacyKeyValueFormat",
            2,
            "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format",
        ),
        (
            "FROM scratch\nARG AWS_SECRET_ACCESS_KEY\n",
            "SecretsUsedInArgOrEnv",
            2,
            "Do not use ARG or ENV instructions for sensitive data (ARG \"AWS_SECRET_ACCESS_KEY\")",
        ),
        (
            "ARG TAG\nFROM busybox:${TAG}\n",
            "InvalidDefaultArgInFrom",
            2,
            "Default value for ARG busybox:${TAG} results in empty or invalid base image name",
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (src, rule, line, message) in cases {
        let got = findings(src);
        assert_eq!(
            got,
            vec![(rule.to_string(), *line, message.to_string())],
            "{src}"
        );
        seen.insert(*rule);
    }
    let all: std::collections::BTreeSet<&str> = RULES.iter().map(|r| r.name).collect();
    assert_eq!(seen, all, "every rule forge has is tested here");
}

#[test]
fn what_each_rule_lets_pass() {
    for src in [
        // Lowercase stage names; AS in the case of FROM, either way.
        "FROM alpine AS builder-base\n",
        "from alpine as other\n",
        // JSON form, or shell form after an explicit SHELL.
        "FROM alpine\nCMD [\"run\"]\nENTRYPOINT [\"x\"]\n",
        "FROM alpine\nSHELL [\"/bin/bash\", \"-c\"]\nENTRYPOINT echo hello\n",
        // Declared global ARGs, the platform ARGs BuildKit defines, defaults that give a name.
        "ARG TAG=latest\nARG VARIANT\nARG ALT\nFROM busybox:${TAG}\nFROM --platform=$BUILDPLATFORM busybox:stable${VARIANT}\nFROM alpine:${ALT:-3.14}\n",
        // A relative WORKDIR after an absolute one, also in a stage built on that stage.
        "FROM alpine AS a\nWORKDIR /app\nWORKDIR src\nFROM a\nWORKDIR more\n",
        // Variables from the base image, ARG and ENV (an earlier stage's ENV too); names that only
        // look like secrets.
        "FROM alpine AS a\nARG foo\nENV BAR=1\nCOPY $foo $BAR $HOME /x/\nFROM a\nENV X=$BAR\nARG PUBLIC_KEY\nENV KEYBOARD=us\n",
        // One CMD per stage; a HEALTHCHECK's CMD is not a second CMD.
        "FROM alpine\nHEALTHCHECK CMD [\"a\"]\nCMD [\"b\"]\nFROM alpine\nCMD [\"c\"]\n",
        // A base whose environment is not known: its variables are not guessed at.
        "FROM unknown/image\nENV X=$FROM_THE_IMAGE\n",
    ] {
        assert_eq!(findings(src), Vec::new(), "{src}");
    }
}

#[test]
fn checks_are_skipped_by_the_directive_or_the_build_argument() {
    let src = "# check=skip=JSONArgsRecommended,StageNameCasing\nFROM alpine AS BASE_STAGE\nCMD echo hi\nMAINTAINER me\n";
    assert_eq!(rules(src), pairs(&[("MaintainerDeprecated", 4)]));
    let all = "# check=skip=all\nFROM alpine AS BASE_STAGE\nCMD echo hi\n";
    assert_eq!(rules(all), pairs(&[]));
    let plain = "FROM alpine AS BASE\nCMD echo hi\n";
    let got: Vec<String> = findings_with(
        plain,
        &[(
            "BUILDKIT_DOCKERFILE_CHECK",
            "skip=StageNameCasing;error=true",
        )],
    )
    .into_iter()
    .map(|f| f.0)
    .collect();
    assert_eq!(got, ["JSONArgsRecommended"]);
}

#[test]
fn findings_come_in_the_order_of_the_file() {
    let src = "from alpine AS Base\nMAINTAINER me\nWORKDIR rel\n";
    assert_eq!(
        rules(src),
        pairs(&[
            ("ConsistentInstructionCasing", 1),
            ("FromAsCasing", 1),
            ("StageNameCasing", 1),
            ("MaintainerDeprecated", 2),
            ("WorkdirRelativePath", 3),
        ])
    );
}
