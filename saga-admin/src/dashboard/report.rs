//! The activity report of an environment, on its list page: a link to this week's CSV, and a
//! form for a period of whole UTC days, which `list.js` turns into the `since` and `until` of
//! `GET /api/v1/environments/{env}/report.csv`.

use maud::{html, Markup};

use super::layout::enc;

/// The report's heading and card.
pub(super) fn card(base: &str, environment: &str) -> Markup {
    let csv = format!("{base}/api/v1/environments/{}/report.csv", enc(environment));
    html! {
        h2 { "Activity report" }
        div.card {
            p {
                a #report-link href=(csv) download { "Download this week's activity (CSV)" }
            }
            form.filters #report-form action=(csv) {
                label { "From (UTC day)" input type="date" #report-since required; }
                label { "To (UTC day, included)" input type="date" #report-until required; }
                button type="submit" { "Download CSV" }
                span.error #report-message {}
            }
        }
    }
}
