"""The dashboard's pages, run by st.navigation in streamlit_app.py, and the one step they share.

Streamlit runs neither this file nor anything else here as a page of its own: st.navigation
lists the pages, and its legacy mode (below) skips ``__init__.py``.
"""

from pathlib import Path

import streamlit as st


def through_the_app(page_file: str) -> None:
    """Send a page that was opened before streamlit_app.py ran through the app, then back.

    Until some session has called st.navigation, Streamlit runs a deep link such as /live
    straight from pages/ (its legacy mode), without the app's page config and navigation.
    """
    if not st.session_state.get("app"):
        st.session_state.return_to = f"pages/{Path(page_file).name}"
        st.switch_page("streamlit_app.py")
