//! JUnit XML reports (`artifacts: reports: junit:`) read into a summary: how many tests passed,
//! failed, errored and were skipped, and which failed, by name. The XML is read by junit-parser
//! (which handles the dialects of surefire, pytest, jest, go-junit-report and nextest), after a
//! streaming pass that bounds the report's size and its element nesting: a report is written by
//! the job under test, so it is input like any other, and a 100,000-deep `<testsuite>` must be a
//! clear error, not a stack overflow.

use std::fmt;
use std::io::Read;

use quick_xml::events::Event;

/// The largest report read, in bytes.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
/// The deepest element nesting accepted (a real report nests suites a few levels at most).
pub const MAX_DEPTH: usize = 64;
/// How many failed tests a summary names; the count stays exact past it.
pub const MAX_NAMED_FAILURES: usize = 200;

/// What the reports of a job say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TestSummary {
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
    pub skipped: u64,
    /// Failed and errored tests, in report order, at most [`MAX_NAMED_FAILURES`].
    pub failures: Vec<FailedTest>,
}

/// One failed (or errored) test.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedTest {
    /// `classname.name` when the report gives a class, else the suite's name and the test's.
    pub name: String,
    /// The failure's message attribute, or the first line of its text.
    pub message: String,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("JUnit report {origin}: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("JUnit report {origin} is larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("JUnit report {origin}: elements nest deeper than {MAX_DEPTH} levels (at byte {at})")]
    TooDeep { origin: String, at: u64 },
    #[error("JUnit report {origin}: not well-formed XML at byte {at}: {message}")]
    Xml {
        origin: String,
        at: u64,
        message: String,
    },
    #[error("JUnit report {origin}: {message}")]
    Junit { origin: String, message: String },
}

impl TestSummary {
    /// Reads one report; `origin` names it in errors (`job unit: reports/junit.xml`).
    pub fn read(input: impl Read, origin: &str) -> Result<TestSummary, JunitError> {
        let mut bytes = Vec::new();
        input
            .take(MAX_REPORT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| JunitError::Read {
                origin: origin.into(),
                source,
            })?;
        if bytes.len() as u64 > MAX_REPORT_BYTES {
            return Err(JunitError::TooLarge {
                origin: origin.into(),
            });
        }
        check_depth(&bytes[..], origin)?;
        let suites = junit_parser::from_reader(&bytes[..]).map_err(|e| JunitError::Junit {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        let mut summary = TestSummary::default();
        for suite in &suites.suites {
            summary.add_suite(suite);
        }
        Ok(summary)
    }

    fn add_suite(&mut self, suite: &junit_parser::TestSuite) {
        for case in &suite.cases {
            let failure = match &case.status {
                junit_parser::TestStatus::Success => {
                    self.passed += 1;
                    None
                }
                junit_parser::TestStatus::Skipped(_) => {
                    self.skipped += 1;
                    None
                }
                junit_parser::TestStatus::Failure(f) => {
                    self.failed += 1;
                    Some((&f.message, &f.text))
                }
                junit_parser::TestStatus::Error(e) => {
                    self.errored += 1;
                    Some((&e.message, &e.text))
                }
            };
            if let Some((message, text)) = failure
                && self.failures.len() < MAX_NAMED_FAILURES
            {
                // junit-parser's `name` joins class and name with `::`; the report's own is kept
                // in `original_name`.
                let test = &case.original_name;
                let name = match case.classname.as_deref() {
                    Some(class) if !class.is_empty() => format!("{class}.{test}"),
                    _ if !suite.name.is_empty() => format!("{}.{test}", suite.name),
                    _ => test.clone(),
                };
                let message = if message.trim().is_empty() {
                    text.trim().lines().next().unwrap_or_default().to_string()
                } else {
                    message.trim().to_string()
                };
                self.failures.push(FailedTest { name, message });
            }
        }
        for inner in &suite.suites {
            self.add_suite(inner);
        }
    }

    /// Adds another report's counts and failures (a job may name several reports).
    pub fn merge(&mut self, other: TestSummary) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.errored += other.errored;
        self.skipped += other.skipped;
        let room = MAX_NAMED_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }

    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.errored + self.skipped
    }
}

impl fmt::Display for TestSummary {
    /// `12 tests: 10 passed, 1 failed, 0 errored, 1 skipped`, then one line per failed test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tests: {} passed, {} failed, {} errored, {} skipped",
            self.total(),
            self.passed,
            self.failed,
            self.errored,
            self.skipped
        )?;
        for t in &self.failures {
            if t.message.is_empty() {
                write!(f, "\n  failed: {}", t.name)?;
            } else {
                write!(f, "\n  failed: {}: {}", t.name, t.message)?;
            }
        }
        let unnamed = (self.failed + self.errored).saturating_sub(self.failures.len() as u64);
        if unnamed > 0 {
            write!(f, "\n  ... and {unnamed} more")?;
        }
        Ok(())
    }
}

/// A streaming pass over the XML: well-formedness as far as nesting goes, and its depth.
fn check_depth(bytes: &[u8], origin: &str) -> Result<(), JunitError> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    loop {
        let at = reader.buffer_position();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(_)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JunitError::TooDeep {
                        origin: origin.into(),
                        at,
                    });
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(JunitError::Xml {
                    origin: origin.into(),
                    at,
                    message: e.to_string(),
                });
            }
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Maven Surefire writes (TEST-<class>.xml): one suite, properties, a failure with a
    /// message, type and stack trace, an error, a skipped test.
    const SUREFIRE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="https://maven.apache.org/surefire/maven-surefire-plugin/xsd/surefire-test-report.xsd" version="3.0" name="com.example.AppTest" time="0.052" tests="4" errors="1" skipped="1" failures="1">
  <properties>
    <property name="java.version" value="17.0.15"/>
    <property name="os.name" value="Linux"/>
  </properties>
  <testcase name="addsTwoNumbers" classname="com.example.AppTest" time="0.003"/>
  <testcase name="rejectsNegative" classname="com.example.AppTest" time="0.011">
    <failure message="expected: &lt;4&gt; but was: &lt;5&gt;" type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: expected: <4> but was: <5>
	at com.example.AppTest.rejectsNegative(AppTest.java:21)
]]></failure>
  </testcase>
  <testcase name="readsConfig" classname="com.example.AppTest" time="0.002">
    <error message="config.yml (No such file or directory)" type="java.io.FileNotFoundException"><![CDATA[java.io.FileNotFoundException: config.yml (No such file or directory)
]]></error>
  </testcase>
  <testcase name="slowPath" classname="com.example.AppTest" time="0">
    <skipped message="disabled on CI"/>
  </testcase>
</testsuite>
"#;

    /// The shape pytest writes (`--junitxml`): `testsuites` around one `testsuite` with
    /// timestamp and hostname; a failure whose message is an attribute.
    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="2" time="0.031" timestamp="2026-12-03T10:15:02.412345+00:00" hostname="ci-runner-3"><testcase classname="tests.test_db" name="test_insert" time="0.010" /><testcase classname="tests.test_db" name="test_unique" time="0.012"><failure message="AssertionError: assert 2 == 1">def test_unique(db):
&gt;       assert count(db) == 1
E       AssertionError: assert 2 == 1

tests/test_db.py:14: AssertionError</failure></testcase></testsuite></testsuites>"#;

    #[test]
    fn a_surefire_report_is_summarised_with_its_failed_tests_named() {
        let s = TestSummary::read(SUREFIRE.as_bytes(), "surefire").unwrap();
        assert_eq!((s.passed, s.failed, s.errored, s.skipped), (1, 1, 1, 1));
        assert_eq!(
            s.failures,
            vec![
                FailedTest {
                    name: "com.example.AppTest.rejectsNegative".into(),
                    message: "expected: <4> but was: <5>".into(),
                },
                FailedTest {
                    name: "com.example.AppTest.readsConfig".into(),
                    message: "config.yml (No such file or directory)".into(),
                },
            ]
        );
        assert_eq!(
            s.to_string(),
            "4 tests: 1 passed, 1 failed, 1 errored, 1 skipped\n  \
             failed: com.example.AppTest.rejectsNegative: expected: <4> but was: <5>\n  \
             failed: com.example.AppTest.readsConfig: config.yml (No such file or directory)"
        );
    }

    #[test]
    fn a_pytest_report_and_a_merge() {
        let mut s = TestSummary::read(PYTEST.as_bytes(), "pytest").unwrap();
        assert_eq!((s.passed, s.failed), (1, 1));
        assert_eq!(s.failures[0].name, "tests.test_db.test_unique");
        assert_eq!(s.failures[0].message, "AssertionError: assert 2 == 1");
        s.merge(TestSummary::read(SUREFIRE.as_bytes(), "surefire").unwrap());
        assert_eq!(s.total(), 6);
        assert_eq!(s.failures.len(), 3);
    }

    #[test]
    fn hostile_reports_are_clear_errors() {
        let deep = format!(
            "<testsuites>{}{}</testsuites>",
            "<testsuite>".repeat(100_000),
            "</testsuite>".repeat(100_000)
        );
        let e = TestSummary::read(deep.as_bytes(), "deep.xml").unwrap_err();
        assert!(e.to_string().contains("nest deeper than 64"), "{e}");
        let e = TestSummary::read(&b"<testsuite><testcase"[..], "cut.xml").unwrap_err();
        assert!(e.to_string().starts_with("JUnit report cut.xml"), "{e}");
        let e = TestSummary::read(std::io::repeat(b' ').take(MAX_REPORT_BYTES + 10), "big")
            .unwrap_err();
        assert!(matches!(e, JunitError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn the_named_failures_are_capped_and_the_rest_counted() {
        let cases: String = (0..250)
            .map(|i| format!("<testcase name=\"t{i}\"><failure message=\"m\"/></testcase>"))
            .collect();
        let xml = format!("<testsuite name=\"s\">{cases}</testsuite>");
        let s = TestSummary::read(xml.as_bytes(), "many").unwrap();
        assert_eq!(s.failed, 250);
        assert_eq!(s.failures.len(), MAX_NAMED_FAILURES);
        assert!(s.to_string().ends_with("... and 50 more"), "{s}");
    }
}
