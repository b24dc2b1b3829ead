"""The "Engine profile" expander (Home and Layer sensitivity): which engine the tables follow, which
tensors it keeps in float and why (quantviz.profiles), tensors to quantize anyway, and whether tensors
that feed graph outputs may be clipped (quantviz.outputs). Reads widgets and sets the review only."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from quantviz.profiles import PROFILES
from quantviz.table import CalibrationTable
from ui import state


def engine_profile_expander(table: CalibrationTable, where: str) -> None:
    review = state.review()
    keys = list(PROFILES)
    with st.expander(f"Engine profile: {PROFILES[review.profile].title}", expanded=False):
        choice = st.selectbox(
            "Engine the tables, analyses, best method, EQ and exports follow",
            keys,
            index=keys.index(review.profile),
            format_func=lambda k: f"{PROFILES[k].title} ({k})",
            key=f"{where}_profile",
        )
        st.caption(f"{PROFILES[choice].summary}. Source: {'; '.join(PROFILES[choice].sources)}.")
        clip = st.checkbox(
            "Let the method clip tensors that feed graph outputs (default: MinMax there, their tails are the decisions)",
            value=review.clip_outputs,
            key=f"{where}_clip_outputs",
        )
        if choice != review.profile or clip != review.clip_outputs:
            state.set_review(replace(review, profile=choice, clip_outputs=clip))
            st.rerun()
        kept = {n: e.extra["profile_float"] for n, e in table.tensors.items() if e.extra.get("profile_float")}
        overridden = sorted(n for n, c in review.choices.items() if c.quantized)
        if kept:
            st.write(f"{len(kept)} tensors stay in float under this profile:")
            st.dataframe(pd.DataFrame({"tensor": list(kept), "why": list(kept.values())}), hide_index=True, key=f"{where}_kept")
        else:
            st.write("This profile quantizes every tensor of the model.")
        forced = st.multiselect(
            "Quantize anyway",
            sorted(set(kept) | set(overridden)),
            default=overridden,
            key=f"{where}_forced",
        )
        if sorted(forced) != overridden:
            r = review
            for n in set(forced) ^ set(overridden):
                r = r.with_choice(n, quantized=n in forced)
            state.set_review(r)
            st.rerun()
        clips = dict(table.settings.get("output_clip_warnings") or {})
        protected = [n for n, e in table.tensors.items() if e.extra.get("output_minmax")]
        if protected:
            st.caption(f"Graph inputs and tensors feeding graph outputs, MinMax instead of a clipping threshold: {', '.join(protected)}.")
        for text in clips.values():
            st.warning(text)
        for text in (v.get("text", "") for v in dict(table.settings.get("bias_overflow") or {}).values()):
            st.warning(text)
